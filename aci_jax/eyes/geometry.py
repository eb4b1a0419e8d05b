"""Eye geometry: where each eye sits on the agent and which rays its pixels cast.

Morphology is data: an individual's eyes are an `EyeParams` of arrays (grid size, resolution, fov,
placement ranges). Buffers are sized by static maxima (`max_eyes`, `max_res` pixels per side,
`supersample`² rays per pixel), and the individual's values decide ray directions and validity masks,
so individuals with different eyes are rows of one vmapped batch. The optics eye's aperture, lens
and pupil mask (`optics.OpticsParams`) are arrays in `EyeParams.optics` likewise; it is None (no
leaves) when the config has no optics, so such configs and their checkpoints keep today's layout.

Two pixel layouts share these maxima:
- buffer (default): every eye slot holds a (max_height, max_width) image; cost max_eyes · H · W pixels.
- packed (`max_pixels` = P, config `env.render.max_pixels`): the individual's real pixels fill the
  first n_eyes · w · h of P slots (`packed_slots`), eye-major then row then column, so cost follows a
  pixel budget (ACI: 50) rather than the product of maxima. `packed_rays` gives each slot the rays
  `camera_rays` gives the same pixel; `unpack` scatters slots back into buffer images for display.

Conventions (ACI): lon 0 faces forward (+x of the agent), positive lon to the left, lat 0 on the
equator; the eye sits on the agent's sphere and looks along the outward normal. Image rows run top
to bottom, columns left to right; pixel (row, col) integrates its patch of the field of view.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from aci_jax.eyes.optics import OpticsConfig, OpticsParams, params_from_config


@struct.dataclass
class EyeParams:
    """One individual's eyes (all arrays, so they can differ along a vmapped population axis)."""

    num_eyes: jax.Array  # (2,) int: (n_lat, n_lon) grid
    resolution: jax.Array  # (2,) int: (width, height) pixels
    fov: jax.Array  # (2,) float: (fovx, fovy) degrees
    lat_range: jax.Array  # (2,) float degrees
    lon_range: jax.Array  # (2,) float degrees
    optics: OpticsParams | None = None  # aperture, lens, pupil mask: only with eyes.optics.enabled
    # Optional genes, masks over static maxima (None: off, today's behaviour; the tree then has no
    # leaf for them, so configs, checkpoints and programs without them are unchanged):
    frame_stack: jax.Array | None = None  # () int k: only the newest k of env.frame_stack frames reach the network
    policy_width: jax.Array | None = None  # () int w: hidden units >= w of the policy and value MLPs are zeroed

    @classmethod
    def from_config(cls, eyes) -> "EyeParams":
        optics = optics_config(eyes)
        opt = lambda k: None if eyes.get(k) is None else jnp.asarray(int(eyes[k]), jnp.int32)
        return cls(
            num_eyes=jnp.asarray(list(eyes["num_eyes"]), jnp.int32),
            resolution=jnp.asarray(list(eyes["resolution"]), jnp.int32),
            fov=jnp.asarray(list(eyes["fov"]), jnp.float32),
            lat_range=jnp.asarray(list(eyes["lat_range"]), jnp.float32),
            lon_range=jnp.asarray(list(eyes["lon_range"]), jnp.float32),
            optics=None if optics is None else params_from_config(eyes["optics"], optics),
            frame_stack=opt("frame_stack"),
            policy_width=opt("policy_width"),
        )


def optics_config(eyes) -> OpticsConfig | None:
    """The static optics settings of an eyes config, None when it has no enabled `optics`."""
    optics = eyes.get("optics")
    if not optics or not optics.get("enabled", False):
        return None
    return OpticsConfig.from_config(optics)


@dataclasses.dataclass(frozen=True)
class EyeBuffer:
    """Static maxima that fix every array shape.

    Images are (height, width) = (max_height or max_res, max_width or max_res); `max_pixels` None is
    the buffer layout, an int P the packed one (see the module docstring).
    """

    max_eyes: int
    max_res: int
    supersample: int
    max_pixels: int | None = None
    max_width: int | None = None
    max_height: int | None = None

    @property
    def width(self) -> int:
        return self.max_width or self.max_res

    @property
    def height(self) -> int:
        return self.max_height or self.max_res

    @property
    def packed(self) -> bool:
        return self.max_pixels is not None

    @property
    def pixels(self) -> int:
        """Pixels rendered and observed per individual: P packed, max_eyes · H · W buffered."""
        return self.max_pixels if self.packed else self.max_eyes * self.height * self.width

    def names(self, num_eyes=None) -> list[str]:
        """Eye names: `eye_{i}_{j}` of the configured grid when the buffer holds exactly it."""
        if num_eyes is not None and num_eyes[0] * num_eyes[1] == self.max_eyes:
            return [f"eye_{i}_{j}" for i in range(num_eyes[0]) for j in range(num_eyes[1])]
        return [f"eye_{k}" for k in range(self.max_eyes)]


def eye_placements(p: EyeParams, buf: EyeBuffer) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(lat, lon) in radians per eye slot (max_eyes,) and the slot validity mask.

    Slot k is grid cell (k // n_lon, k % n_lon). As ACI: n eyes over a range sit at evenly spaced
    points including its ends (8 eyes over [-90, 90]: ±12.9 … ±90), so the range says how far round
    the body the eyes reach; a single eye sits at the middle; over a full circle (a lon span of 360°)
    n eyes are 360°/n apart, so the two ends do not put two eyes at one spot.
    """
    n_lat, n_lon = p.num_eyes[0], p.num_eyes[1]
    k = jnp.arange(buf.max_eyes)
    a, b = k // n_lon, k % n_lon

    def spread(rng, n, i, circle: bool):
        span = rng[1] - rng[0]
        full = circle & (span >= 360.0 - 1e-4)
        step = jnp.where(full, span / n, span / jnp.maximum(n - 1, 1))
        return jnp.where(n > 1, rng[0] + step * i, (rng[0] + rng[1]) / 2)

    lat = spread(p.lat_range, n_lat, a, False)
    lon = spread(p.lon_range, n_lon, b, True)
    return jnp.deg2rad(lat), jnp.deg2rad(lon), k < n_lat * n_lon


def pixel_mask(p: EyeParams, buf: EyeBuffer) -> jax.Array:
    """(max_eyes, H, W) bool: which buffer pixels belong to a real eye and pixel."""
    _, _, eye_ok = eye_placements(p, buf)
    ok = (jnp.arange(buf.height)[:, None] < p.resolution[1]) & (jnp.arange(buf.width)[None, :] < p.resolution[0])
    return eye_ok[:, None, None] & ok[None]


def packed_slots(p: EyeParams, buf: EyeBuffer) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(eye, row, col, valid), each (P,), of the packed layout's pixel slots.

    Slot s < n_eyes · w · h holds eye s // (w·h), pixel q = s % (w·h) at row q // w, column q % w.
    Slots beyond are invalid; their indices are clamped into range (eye max_eyes - 1, row and col 0),
    so gathers stay in bounds, and masks zero them.
    """
    w, h = p.resolution[0], p.resolution[1]
    s = jnp.arange(buf.max_pixels)
    valid = s < p.num_eyes[0] * p.num_eyes[1] * w * h
    q = s % (w * h)
    eye = jnp.where(valid, s // (w * h), buf.max_eyes - 1)
    return eye, jnp.where(valid, q // w, 0), jnp.where(valid, q % w, 0), valid


def eye_frames(lat: jax.Array, lon: jax.Array) -> jax.Array:
    """(…, 3, 3) rotation per eye in the agent frame: columns = forward, left, up."""
    cl, sl, co, so = jnp.cos(lat), jnp.sin(lat), jnp.cos(lon), jnp.sin(lon)
    fwd = jnp.stack([cl * co, cl * so, sl], -1)
    left = jnp.stack([-so, co, jnp.zeros_like(so)], -1)
    up = jnp.cross(fwd, left)
    return jnp.stack([fwd, left, up], -1)


def _pixel_rays(frame: jax.Array, fov_deg: jax.Array, res: jax.Array, rows: jax.Array, cols: jax.Array,
                supersample: int) -> jax.Array:
    """Unit directions (..., s², 3) of pixels (rows, cols) (broadcast together, with `frame`'s
    leading axes) of a pinhole camera: the one formula of both layouts."""
    s = supersample
    sub = (jnp.arange(s) + 0.5) / s
    col = (cols[..., None] + sub) / res[0] - 0.5  # (..., s) in [-.5, .5]
    row = (rows[..., None] + sub) / res[1] - 0.5
    tx, ty = jnp.tan(jnp.deg2rad(fov_deg[0]) / 2), jnp.tan(jnp.deg2rad(fov_deg[1]) / 2)
    x = -2 * tx * col  # along `left`: image columns run to the right
    y = -2 * ty * row  # along `up`: image rows run downwards
    # (sub_row, sub_col) grid flattened over the s² sub-rays
    shape = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    xg = jnp.broadcast_to(x[..., None, :], (*shape, s, s))
    yg = jnp.broadcast_to(y[..., :, None], (*shape, s, s))
    local = jnp.stack([jnp.ones_like(xg), xg, yg], -1).reshape(*shape, s * s, 3)
    f = frame[..., None, :, :]  # broadcast over the sub-rays
    # Elementwise rather than a (…, 3) @ (3, 3) matmul: XLA:CPU runs tiny batched dots slowly.
    dirs = local[..., 0:1] * f[..., :, 0] + local[..., 1:2] * f[..., :, 1] + local[..., 2:3] * f[..., :, 2]
    return dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)


def ray_footprints(frame: jax.Array, fov_deg: jax.Array, res: jax.Array, supersample: int):
    """Sub-ray footprints of a camera with rotation `frame` (..., 3, 3): (step_x, step_y, axis), each
    (..., 3). The steps between neighbouring sub-rays along image columns and rows on the image plane
    at unit distance along the optical axis frame[..., :, 0] (each sub-ray stands for a fov/res/s
    patch: the s² patches tile the pixel). A ray d's direction changes by (d·axis)·step across its
    patch (up to a part along d, which moves no hit point); `cast_rays` carries that to the surface
    it hits to box-filter textures. The axis is also the direction of MuJoCo's headlight. They come
    from `fov_deg` and `res` as arrays, so they differ per individual in a vmapped batch like the
    directions do."""
    s = supersample
    tx, ty = jnp.tan(jnp.deg2rad(fov_deg[0]) / 2), jnp.tan(jnp.deg2rad(fov_deg[1]) / 2)
    return (-2 * tx / (res[0] * s) * frame[..., :, 1], -2 * ty / (res[1] * s) * frame[..., :, 2],
            frame[..., :, 0])


def camera_rays(frame: jax.Array, fov_deg: jax.Array, res: jax.Array, max_res: int | tuple[int, int],
                supersample: int, margin: int = 0, differentials: bool = False):
    """Unit ray directions (H + 2·margin, W + 2·margin, s², 3) of a pinhole camera with rotation `frame`.

    `max_res` is the buffer size: H = W = max_res, or (H, W). `res` = (width, height) decides the
    pixel grid inside the buffer; pixel (row, col) casts s² rays spread evenly over its patch of the
    field of view. Pixels outside `res` get directions too (valid but unused; masks zero them).
    `margin` adds that many pixels of the same pitch on each side (indices -margin … H + margin - 1),
    beyond the field of view (the optics eye's blur). differentials=True returns (dirs, step_x,
    step_y): the footprints of `ray_footprints`.
    """
    hgt, wid = (max_res, max_res) if isinstance(max_res, int) else max_res
    rows = jnp.arange(hgt + 2 * margin) - margin
    cols = jnp.arange(wid + 2 * margin) - margin
    dirs = _pixel_rays(frame, fov_deg, res, rows[:, None], cols[None, :], supersample)
    if not differentials:
        return dirs
    return (dirs, *ray_footprints(frame, fov_deg, res, supersample)[:2])


def _world_frames(p: EyeParams, buf: EyeBuffer, pos: jax.Array, yaw: jax.Array, radius: float):
    """World-frame eye rotations (max_eyes, 3, 3) and ray origins (max_eyes, 3)."""
    lat, lon, _ = eye_placements(p, buf)
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    body = jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    frames = body @ eye_frames(lat, lon)  # (E, 3, 3) world
    return frames, pos + radius * frames[:, :, 0]


def eye_rays(p: EyeParams, buf: EyeBuffer, pos: jax.Array, yaw: jax.Array, radius: float, margin: int = 0,
             differentials: bool = False):
    """World-frame ray origins (max_eyes, 3) and directions (max_eyes, H + 2m, W + 2m, s², 3) of an
    agent, m = margin (see `camera_rays`). differentials=True returns (origins, dirs, step_x,
    step_y, axes), each eye's footprints (max_eyes, 3) (see `ray_footprints`)."""
    frames, origins = _world_frames(p, buf, pos, yaw, radius)
    size = (buf.height, buf.width)
    dirs = jax.vmap(lambda f: camera_rays(f, p.fov, p.resolution, size, buf.supersample, margin))(frames)
    if not differentials:
        return origins, dirs
    return (origins, dirs, *ray_footprints(frames, p.fov, p.resolution, buf.supersample))


def packed_rays(p: EyeParams, buf: EyeBuffer, pos: jax.Array, yaw: jax.Array, radius: float,
                differentials: bool = False):
    """World-frame ray origins (P, 3) and directions (P, s², 3) of the packed layout's slots: slot
    (eye, row, col) casts the rays `eye_rays` gives that pixel (invalid slots: some valid pixel's).
    differentials=True returns (origins, dirs, step_x, step_y, axes), each (P, 3) but dirs."""
    frames, origins = _world_frames(p, buf, pos, yaw, radius)
    eye, row, col, _ = packed_slots(p, buf)
    dirs = _pixel_rays(frames[eye], p.fov, p.resolution, row, col, buf.supersample)
    if not differentials:
        return origins[eye], dirs
    return (origins[eye], dirs, *ray_footprints(frames[eye], p.fov, p.resolution, buf.supersample))


def unpack(pixels: jax.Array, p: EyeParams, buf: EyeBuffer, axis: int = -2, fill=0) -> jax.Array:
    """Packed values → buffer images: the slot axis `axis` (size P) of `pixels` becomes
    (max_eyes, H, W), holding `fill` outside the individual's pixels. Default: RGB (..., P, 3) →
    (..., max_eyes, H, W, 3); `axis=-1` for depth (..., P). For display (videos, mosaics) and the
    cnn encoder: it costs max_eyes · H · W, so the env's step never calls it.
    """
    axis = axis % pixels.ndim
    w, h = p.resolution[0], p.resolution[1]
    k = jnp.arange(buf.max_eyes)[:, None, None]
    r = jnp.arange(buf.height)[None, :, None]
    c = jnp.arange(buf.width)[None, None, :]
    slot = k * (w * h) + r * w + c  # (E, H, W)
    ok = pixel_mask(p, buf) & (slot < buf.max_pixels)
    out = jnp.take(pixels, jnp.where(ok, slot, 0), axis=axis)  # (..., E, H, W, ...)
    ok = ok.reshape(ok.shape + (1,) * (pixels.ndim - axis - 1))
    return jnp.where(ok, out, jnp.asarray(fill, pixels.dtype))


def static_buffer(eyes_cfg, render_cfg) -> EyeBuffer:
    """Buffer maxima from the render config, defaulting to the configured eyes' own size."""
    n = int(eyes_cfg["num_eyes"][0]) * int(eyes_cfg["num_eyes"][1])
    res = int(max(eyes_cfg["resolution"]))
    opt = lambda k: None if render_cfg.get(k) is None else int(render_cfg.get(k))
    return EyeBuffer(
        max_eyes=int(render_cfg.get("max_eyes") or n),
        max_res=int(render_cfg.get("max_resolution") or res),
        supersample=int(render_cfg.get("supersample", 1)),
        max_pixels=opt("max_pixels"),
        max_width=opt("max_width"),
        max_height=opt("max_height"),
    )


def lookat_rays(eye: np.ndarray, target: np.ndarray, fov_deg: float, size: int, supersample: int = 1,
                differentials: bool = False):
    """Rays (size, size, s², 3) of a perspective camera at `eye` looking at `target` (views), with
    no roll (as MuJoCo's free camera). differentials=True: (dirs, step_x, step_y, axis), see
    `camera_rays`."""
    f = target - eye
    f = f / jnp.linalg.norm(f)
    left = jnp.cross(jnp.array([0.0, 0.0, 1.0]), f)
    left = left / (jnp.linalg.norm(left) + 1e-9)
    frame = jnp.stack([f, left, jnp.cross(f, left)], -1)
    fov = jnp.array([fov_deg, fov_deg])
    out = camera_rays(frame, fov, jnp.array([size, size]), size, supersample, differentials=differentials)
    return (*out, f) if differentials else out
