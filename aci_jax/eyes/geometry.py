"""Eye geometry: where each eye sits on the agent and which rays its pixels cast.

Morphology is data: an individual's eyes are an `EyeParams` of arrays (grid size, resolution, fov,
placement ranges). Buffers are sized by static maxima (`max_eyes`, `max_res` pixels per side,
`supersample`² rays per pixel), and the individual's values decide ray directions and validity masks,
so individuals with different eyes are rows of one vmapped batch.

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


@struct.dataclass
class EyeParams:
    """One individual's eyes (all arrays, so they can differ along a vmapped population axis)."""

    num_eyes: jax.Array  # (2,) int: (n_lat, n_lon) grid
    resolution: jax.Array  # (2,) int: (width, height) pixels
    fov: jax.Array  # (2,) float: (fovx, fovy) degrees
    lat_range: jax.Array  # (2,) float degrees
    lon_range: jax.Array  # (2,) float degrees

    @classmethod
    def from_config(cls, eyes) -> "EyeParams":
        return cls(
            num_eyes=jnp.asarray(list(eyes["num_eyes"]), jnp.int32),
            resolution=jnp.asarray(list(eyes["resolution"]), jnp.int32),
            fov=jnp.asarray(list(eyes["fov"]), jnp.float32),
            lat_range=jnp.asarray(list(eyes["lat_range"]), jnp.float32),
            lon_range=jnp.asarray(list(eyes["lon_range"]), jnp.float32),
        )


@dataclasses.dataclass(frozen=True)
class EyeBuffer:
    """Static maxima that fix every array shape."""

    max_eyes: int
    max_res: int
    supersample: int

    def names(self, num_eyes=None) -> list[str]:
        """Eye names: `eye_{i}_{j}` of the configured grid when the buffer holds exactly it."""
        if num_eyes is not None and num_eyes[0] * num_eyes[1] == self.max_eyes:
            return [f"eye_{i}_{j}" for i in range(num_eyes[0]) for j in range(num_eyes[1])]
        return [f"eye_{k}" for k in range(self.max_eyes)]


def eye_placements(p: EyeParams, buf: EyeBuffer) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(lat, lon) in radians per eye slot (max_eyes,) and the slot validity mask.

    Slot k is grid cell (k // n_lon, k % n_lon); eyes are evenly spaced strictly inside each range,
    so a single eye sits at the middle of its range.
    """
    n_lat, n_lon = p.num_eyes[0], p.num_eyes[1]
    k = jnp.arange(buf.max_eyes)
    a, b = k // n_lon, k % n_lon
    lat = p.lat_range[0] + (p.lat_range[1] - p.lat_range[0]) * (a + 1) / (n_lat + 1)
    lon = p.lon_range[0] + (p.lon_range[1] - p.lon_range[0]) * (b + 1) / (n_lon + 1)
    return jnp.deg2rad(lat), jnp.deg2rad(lon), k < n_lat * n_lon


def pixel_mask(p: EyeParams, buf: EyeBuffer) -> jax.Array:
    """(max_eyes, max_res, max_res) bool: which buffer pixels belong to a real eye and pixel."""
    _, _, eye_ok = eye_placements(p, buf)
    r = jnp.arange(buf.max_res)
    ok = (r[:, None] < p.resolution[1]) & (r[None, :] < p.resolution[0])
    return eye_ok[:, None, None] & ok[None]


def eye_frames(lat: jax.Array, lon: jax.Array) -> jax.Array:
    """(…, 3, 3) rotation per eye in the agent frame: columns = forward, left, up."""
    cl, sl, co, so = jnp.cos(lat), jnp.sin(lat), jnp.cos(lon), jnp.sin(lon)
    fwd = jnp.stack([cl * co, cl * so, sl], -1)
    left = jnp.stack([-so, co, jnp.zeros_like(so)], -1)
    up = jnp.cross(fwd, left)
    return jnp.stack([fwd, left, up], -1)


def camera_rays(frame: jax.Array, fov_deg: jax.Array, res: jax.Array, max_res: int,
                supersample: int, differentials: bool = False):
    """Unit ray directions (max_res, max_res, s², 3) of a pinhole camera with rotation `frame`.

    `res` = (width, height) decides the pixel grid inside the buffer; pixel (row, col) casts s² rays
    spread evenly over its patch of the field of view. Pixels outside `res` get directions too
    (valid but unused; masks zero them).

    differentials=True also returns the ray footprints: (dirs, step_x, step_y), the (3,) steps between
    neighbouring sub-rays along image columns and rows on the image plane at unit distance along the
    optical axis frame[:, 0] (each sub-ray stands for a fov/res/s patch: the s² patches tile the
    pixel). A ray d's direction changes by (d·axis)·step across its patch (up to a part along d,
    which moves no hit point); `cast_rays` carries that to the surface it hits to box-filter
    textures. They come from `fov_deg` and `res` as arrays, so they differ per individual in a
    vmapped batch like the directions do.
    """
    s = supersample
    sub = (jnp.arange(s) + 0.5) / s
    col = (jnp.arange(max_res)[:, None] + sub[None, :]) / res[0] - 0.5  # (max_res, s) in [-.5, .5]
    row = (jnp.arange(max_res)[:, None] + sub[None, :]) / res[1] - 0.5
    tx, ty = jnp.tan(jnp.deg2rad(fov_deg[0]) / 2), jnp.tan(jnp.deg2rad(fov_deg[1]) / 2)
    x = -2 * tx * col  # along `left`: image columns run to the right
    y = -2 * ty * row  # along `up`: image rows run downwards
    # (row, col, sub_row, sub_col) grid flattened over the s² sub-rays
    xg = jnp.broadcast_to(x[None, :, None, :], (max_res, max_res, s, s))
    yg = jnp.broadcast_to(y[:, None, :, None], (max_res, max_res, s, s))
    local = jnp.stack([jnp.ones_like(xg), xg, yg], -1).reshape(max_res, max_res, s * s, 3)
    # Elementwise rather than a (…, 3) @ (3, 3) matmul: XLA:CPU runs tiny batched dots slowly.
    dirs = local[..., 0:1] * frame[:, 0] + local[..., 1:2] * frame[:, 1] + local[..., 2:3] * frame[:, 2]
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    if not differentials:
        return dirs
    return dirs, -2 * tx / (res[0] * s) * frame[:, 1], -2 * ty / (res[1] * s) * frame[:, 2]


def eye_rays(p: EyeParams, buf: EyeBuffer, pos: jax.Array, yaw: jax.Array, radius: float,
             differentials: bool = False):
    """World-frame ray origins (max_eyes, 3) and directions (max_eyes, R, R, s², 3) of an agent.

    differentials=True returns (origins, dirs, step_x, step_y, axes): each eye's sub-ray steps
    (max_eyes, 3) (see `camera_rays`) and optical axis (max_eyes, 3), which is also the direction of
    MuJoCo's headlight.
    """
    lat, lon, _ = eye_placements(p, buf)
    c, s = jnp.cos(yaw), jnp.sin(yaw)
    body = jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    frames = body @ eye_frames(lat, lon)  # (E, 3, 3) world
    origins = pos + radius * frames[:, :, 0]
    cam = lambda f: camera_rays(f, p.fov, p.resolution, buf.max_res, buf.supersample, differentials)
    if not differentials:
        return origins, jax.vmap(cam)(frames)
    dirs, dx, dy = jax.vmap(cam)(frames)
    return origins, dirs, dx, dy, frames[:, :, 0]


def static_buffer(eyes_cfg, render_cfg) -> EyeBuffer:
    """Buffer maxima from the render config, defaulting to the configured eyes' own size."""
    n = int(eyes_cfg["num_eyes"][0]) * int(eyes_cfg["num_eyes"][1])
    res = int(max(eyes_cfg["resolution"]))
    return EyeBuffer(
        max_eyes=int(render_cfg.get("max_eyes") or n),
        max_res=int(render_cfg.get("max_resolution") or res),
        supersample=int(render_cfg.get("supersample", 1)),
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
    out = camera_rays(frame, fov, jnp.array([size, size]), size, supersample, differentials)
    return (*out, f) if differentials else out
