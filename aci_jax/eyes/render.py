"""Pure-JAX ray caster for the maze world: its cost grows with maze grid size, never with #walls.

Walls are found by walking each maze's cell grid with a 2D DDA (Amanatides–Woo) after clipping the
ray to the grid's box and to the wall height slab [0, wall top], so inside the walk every cell the
ray enters is hit at its entry (side face, or top face when the ray comes down through the top).
The floor plane and the visible spheres (agents, objects; render groups 2 and 3 are hidden) are
analytic. Colour follows MuJoCo's fixed-function model without specular or shadows:
clip(base · (emission + lights + headlight)) × texel, where base is the material's rgba unless the
geom has a non-default rgba (MuJoCo's rule: then the geom's rgba, tinting the texture), and the
headlight is a directional light along the camera's optical axis (`view_axis`).

Textures: box faces and the plane use the hit point's two in-plane world coordinates × texrepeat
(walls: texrepeat 1/scale, one texture period per cell; MuJoCo's own renderer draws 2 cells per
period on y faces and smears x faces); spheres are equirectangular in the geom frame, u = longitude,
v = colatitude, so `vertical_N` stripes run pole to pole.

Texture filtering by ray footprint: a texture that varies along one axis only (every texture
aci_jax builds: stripes; constant ones too) is box-filtered exactly over each ray's footprint. The
footprint comes from ray differentials (`ray_dx`, `ray_dy`: how the direction changes across one
sub-ray of the pixel, from the eye's fov/resolution/supersample), transferred to the hit's tangent
plane (distance and obliquity: dP = t·(dd − d·(n·dd)/(n·d))) and mapped to texels through the
surface parametrisation. A parallelogram footprint spanned by texel offsets a, b averages the 1D
profile f over w + a·X + b·Y, X, Y uniform on [−½, ½] (a trapezoid kernel): the second difference of
f's second antiderivative F2, [F2(w + p) − F2(w + q) − F2(w − q) + F2(w − p)] / (|a||b|),
p = (|a|+|b|)/2, q = (|a|−|b|)/2. For square waves (stripes) F2 is closed-form (±φ(1 − φ)/4 per
stripe), so filtering reads no table; other 1D textures read F2 from per-texel tables (piecewise
quadratic, periodic after removing the mean). The s² sub-ray footprints tile the pixel, so a pixel is
the average of the texture over its patch of view (exact where the surface is flat across a sub-ray,
first order on spheres), whatever `supersample`. Footprints are clamped below at 0.1 texel (without
differentials: 0.1-texel boxes, ≈ nearest texel). Textures that vary in both axes (none is built by
aci_jax; a model loaded from elsewhere could have them) are sampled at the nearest texel,
unfiltered. Geometric edges (an object's silhouette against what is behind it) are not filtered:
the s² sub-rays sample them, and a sub-ray grazing a sphere's limb filters over its local tangent
plane only (first order), so at one pixel per object small errors (≤ 0.06) remain at 2×2 sub-rays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from aci_jax.world.scene import MARKER_GROUP, PROXY_GROUP, World

HIDDEN_GROUPS = (MARKER_GROUP, PROXY_GROUP)
DIRECTIONAL = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
_EPS = 1e-9
_MIN_FOOTPRINT = 0.1  # texels: the narrowest box a texture is filtered over


@struct.dataclass
class RenderScene:
    """Static arrays for `cast_rays`, extracted once from a World (M mazes, S spheres, L lights)."""

    grid: jax.Array  # (M, R, C) int32 wall geom id per cell, -1 free (and padding)
    grid_corner: jax.Array  # (M, 2) world x of the grid's left edge, world y of its top edge
    grid_scale: jax.Array  # (M,)
    grid_shape: jax.Array  # (M, 2) rows, cols
    wall_top: jax.Array  # (M,) wall height (walls span z in [0, wall_top])
    floor: jax.Array  # (5,) floor z, centre x, y, half sizes x, y
    sphere_geom: jax.Array  # (S,) int32
    sphere_radius: jax.Array  # (S,)
    geom_rgba: jax.Array  # (ngeom, 3)
    geom_tint: jax.Array  # (ngeom,) bool: the geom's rgba replaces its material's (MuJoCo's rule)
    geom_matid: jax.Array  # (ngeom,) int32, -1 none
    mat_rgba: jax.Array  # (nmat + 1, 3); the extra last row of mat_* stands for "no material"
    mat_emission: jax.Array  # (nmat + 1,)
    mat_texid: jax.Array  # (nmat + 1,) int32 RGB texture, -1 none
    mat_texrepeat: jax.Array  # (nmat + 1, 2)
    tex_adr: jax.Array  # (ntex + 1,) first texel of each texture in `texels`
    tex_size: jax.Array  # (ntex + 1, 2) height, width
    texels: jax.Array  # (P, 3) all textures' RGB in [0, 1], row-major
    tex_axis: jax.Array  # (ntex + 1,) int32: 0 varies along u (columns) only, 1 along v (rows), 2 both
    tex_square: jax.Array  # (ntex + 1,) bool: the 1D profile is a square wave (stripes, or constant)
    tex_stripe: jax.Array  # (ntex + 1,) stripe width in texels of a square wave
    tex_colours: jax.Array  # (ntex + 1, 2, 3) its even and odd stripes' colours
    tex_mean: jax.Array  # (ntex + 1, 3) mean colour
    prof_adr: jax.Array  # (ntex + 1,) int32 first row of each texture's 1D profile in `prof`
    prof_len: jax.Array  # (ntex + 1,) int32 texels along the profile
    prof: jax.Array  # (Q, 9) per profile texel k: F2 at k, F2' at k, texel − mean (see _profile)
    light_directional: jax.Array  # (L,) bool
    light_pos: jax.Array  # (L, 3) in the light's body frame
    light_dir: jax.Array  # (L, 3) in the light's body frame
    light_body: jax.Array  # (L,) int32
    light_anchor: jax.Array  # (L,) int32 a geom on the light's body giving its pose, -1: world body
    anchor_pos: jax.Array  # (L, 3) that geom's pose in its body frame
    anchor_mat: jax.Array  # (L, 3, 3)
    light_ambient: jax.Array  # (L, 3)
    light_diffuse: jax.Array  # (L, 3)
    light_attenuation: jax.Array  # (L, 3)
    headlight: jax.Array  # (2, 3) ambient, diffuse (zeros when inactive)
    background: jax.Array  # (3,)
    floor_geom: int = struct.field(pytree_node=False)
    has_2d_textures: bool = struct.field(pytree_node=False)  # any texture with tex_axis 2
    has_table_textures: bool = struct.field(pytree_node=False)  # any 1D texture not a square wave
    max_steps: int = struct.field(pytree_node=False)  # DDA steps bound: rows + cols + 2


def make_render_scene(world: World, background=(0.0, 0.0, 0.0)) -> RenderScene:
    """Extract the render tables; raises ValueError for a visible geom it cannot draw."""
    m = world.model
    visible = ~np.isin(m.geom_group, HIDDEN_GROUPS)
    walls = set(world.wall_geoms.tolist())
    spheres = np.nonzero(visible & (m.geom_type == mujoco.mjtGeom.mjGEOM_SPHERE))[0]
    for g in np.nonzero(visible)[0]:
        if g != world.floor_geom and g not in walls and g not in spheres:
            raise ValueError(f"geom {m.geom(g).name!r} (type {m.geom_type[g]}) is visible but only "
                             "maze walls, the floor plane and spheres can be rendered")
    rows = max(mi.maze.shape[0] for mi in world.mazes)
    cols = max(mi.maze.shape[1] for mi in world.mazes)
    grid = -np.ones((len(world.mazes), rows, cols), np.int32)
    for k, mi in enumerate(world.mazes):
        grid[k, :mi.maze.shape[0], :mi.maze.shape[1]] = mi.cell_geom
    corner = np.array([mi.offset + [-mi.maze.width / 2, mi.maze.length / 2] for mi in world.mazes])
    fl = world.floor_geom

    texid = m.mat_texid[:, mujoco.mjtTextureRole.mjTEXROLE_RGB]
    rgb = [_texture_rgb(m, t) for t in range(m.ntex)] + [np.ones((1, 1, 3), np.float32)]
    tex_adr = np.cumsum([0] + [t.shape[0] * t.shape[1] for t in rgb[:-1]])
    profiles = [_profile(t) for t in rgb]
    squares = [_square_wave(t) for t in rgb]
    prof_adr = np.cumsum([0] + [len(p[2]) for p in profiles[:-1]])
    # MuJoCo: a geom with a material shows the material's rgba unless its own rgba is not the
    # default (0.5 0.5 0.5 1); then the geom's rgba is used (and tints the texture).
    default_rgba = np.all(np.isclose(m.geom_rgba, [0.5, 0.5, 0.5, 1.0]), axis=1)
    tint = (m.geom_matid < 0) | ~default_rgba

    lights = np.nonzero(m.light_active)[0]
    anchor = np.array([m.body_geomadr[b] if b > 0 else -1 for b in m.light_bodyid[lights]], int)
    if np.any((m.light_bodyid[lights] > 0) & (anchor < 0)):
        raise ValueError("a light on a body without geoms cannot be posed from geom_xpos")
    anchor_mat = np.zeros((len(lights), 9))
    for k, g in enumerate(anchor):
        mujoco.mju_quat2Mat(anchor_mat[k], m.geom_quat[g] if g >= 0 else np.array([1.0, 0, 0, 0]))
    head = m.vis.headlight
    f32 = lambda x: jnp.asarray(np.asarray(x, np.float32))
    i32 = lambda x: jnp.asarray(np.asarray(x, np.int32))
    return RenderScene(
        grid=i32(grid), grid_corner=f32(corner),
        grid_scale=f32([mi.maze.scale for mi in world.mazes]),
        grid_shape=i32([mi.maze.shape for mi in world.mazes]),
        wall_top=f32([2 * mi.maze.wall_half_height for mi in world.mazes]),
        floor=f32([m.geom_pos[fl, 2], m.geom_pos[fl, 0], m.geom_pos[fl, 1], *m.geom_size[fl, :2]]),
        sphere_geom=i32(spheres), sphere_radius=f32(m.geom_size[spheres, 0]),
        geom_rgba=f32(m.geom_rgba[:, :3]), geom_tint=jnp.asarray(tint), geom_matid=i32(m.geom_matid),
        mat_rgba=f32(np.concatenate([m.mat_rgba[:, :3], np.ones((1, 3))])),
        mat_emission=f32(np.append(m.mat_emission, 0.0)),
        mat_texid=i32(np.append(texid, -1)),
        mat_texrepeat=f32(np.concatenate([m.mat_texrepeat, np.ones((1, 2))])),
        tex_adr=i32(tex_adr), tex_size=i32([t.shape[:2] for t in rgb]),
        texels=f32(np.concatenate([t.reshape(-1, 3) for t in rgb])),
        tex_axis=i32([p[0] for p in profiles]), tex_mean=f32([p[1] for p in profiles]),
        tex_square=jnp.asarray([q is not None for q in squares]),
        tex_stripe=f32([q[0] if q else 1.0 for q in squares]),
        tex_colours=f32([q[1] if q else np.zeros((2, 3)) for q in squares]),
        prof_adr=i32(prof_adr), prof_len=i32([len(p[2]) for p in profiles]),
        prof=f32(np.concatenate([p[2] for p in profiles])),
        light_directional=jnp.asarray(m.light_type[lights] == DIRECTIONAL),
        light_pos=f32(m.light_pos[lights]), light_dir=f32(m.light_dir[lights]),
        light_body=i32(m.light_bodyid[lights]), light_anchor=i32(anchor),
        anchor_pos=f32(m.geom_pos[np.maximum(anchor, 0)] * (anchor >= 0)[:, None]),
        anchor_mat=f32(anchor_mat.reshape(-1, 3, 3)),
        light_ambient=f32(m.light_ambient[lights]), light_diffuse=f32(m.light_diffuse[lights]),
        light_attenuation=f32(m.light_attenuation[lights]),
        headlight=f32(np.array([head.ambient, head.diffuse]) * bool(head.active)),
        background=f32(background),
        floor_geom=int(fl), max_steps=int(rows + cols + 2),
        has_2d_textures=any(p[0] == 2 for p in profiles),
        has_table_textures=any(p[0] < 2 and q is None for p, q in zip(profiles, squares)),
    )


def _texture_rgb(m: mujoco.MjModel, t: int) -> np.ndarray:
    """Texture t as float RGB (height, width, 3) in [0, 1] (grey textures replicated)."""
    h, w, c = m.tex_height[t], m.tex_width[t], m.tex_nchannel[t]
    px = m.tex_data[m.tex_adr[t]:m.tex_adr[t] + h * w * c].reshape(h, w, c).astype(np.float32) / 255
    return px[..., :3] if c >= 3 else np.repeat(px[..., :1], 3, axis=-1)


def _profile(rgb: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """A texture's filtering tables: (axis, mean colour (3,), table (L, 9)).

    axis 0: the texture varies along u (its columns) only, profile f = its first row; axis 1: along v
    (rows) only, f = its first column; axis 2: along both (table unused). With g = f − mean, G1 the
    integral of g (zero over a period), c the mean of G1 and F2 the integral of G1 − c (so F2 is
    periodic), row k holds F2(k), F2'(k) = G1(k) − c and g[k]: inside texel k, F2(k + φ) = F2(k) +
    F2'(k)·φ + g[k]·φ²/2. Built in float64.
    """
    rgb = rgb.astype(np.float64)
    if np.all(rgb == rgb[:1]):
        axis, f = 0, rgb[0]
    elif np.all(rgb == rgb[:, :1]):
        axis, f = 1, rgb[:, 0]
    else:
        axis, f = 2, rgb.reshape(-1, 3)[:1]
    mean = f.mean(0) if axis < 2 else rgb.reshape(-1, 3).mean(0)
    g = f - f.mean(0)
    g1 = np.concatenate([np.zeros((1, 3)), np.cumsum(g, 0)[:-1]])  # G1 at the texel starts
    c = (g1 + g / 2).mean(0)  # mean of G1 over a period (G1 is linear inside each texel)
    f2 = np.concatenate([np.zeros((1, 3)), np.cumsum(g1 + g / 2 - c, 0)[:-1]])
    return axis, mean, np.concatenate([f2, g1 - c, g], 1)


def _square_wave(rgb: np.ndarray):
    """(stripe width in texels, (2, 3) colours of the even and odd stripes) when the texture's 1D
    profile is a square wave: two colours alternating in runs of one width, a whole number of
    periods (every stripe texture; a constant texture is one with equal colours). Else None."""
    if np.all(rgb == rgb[:1]):
        f = rgb[0]
    elif np.all(rgb == rgb[:, :1]):
        f = rgb[:, 0]
    else:
        return None
    if np.all(f == f[:1]):
        return float(len(f)), np.stack([f[0], f[0]])
    starts = np.concatenate([[0], np.nonzero(np.any(f[1:] != f[:-1], axis=1))[0] + 1])
    runs = np.diff(np.append(starts, len(f)))
    width = runs[0]
    colours = np.stack([f[0], f[width]])
    stripe = (np.arange(len(f)) // width) % 2
    if np.all(runs == width) and len(f) % (2 * width) == 0 and np.array_equal(f, colours[stripe]):
        return float(width), colours
    return None


def _slab(o, d, lo, hi):
    """Entry/exit t of the ray o + t·d through lo <= x <= hi (±inf where parallel)."""
    inv = 1.0 / jnp.where(jnp.abs(d) < _EPS, _EPS, d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    inside = (o >= lo) & (o <= hi)
    parallel = jnp.abs(d) < _EPS
    t_in = jnp.where(parallel, jnp.where(inside, -jnp.inf, jnp.inf), jnp.minimum(t0, t1))
    t_out = jnp.where(parallel, jnp.where(inside, jnp.inf, -jnp.inf), jnp.maximum(t0, t1))
    return t_in, t_out


def _trace_maze(grid, corner, scale, shape, top, max_steps, o, d, t_max):
    """First wall cell hit by each ray (o, d: xyz tuples) in one maze: t, geom, face axis (0 x,
    1 y, 2 top); inf, -1 where none before t_max."""
    rows, cols = shape[0], shape[1]
    gx, gy = (o[0] - corner[0]) / scale, (corner[1] - o[1]) / scale  # grid coords (col, row)
    dx, dy = d[0] / scale, -d[1] / scale
    tx = _slab(gx, dx, 0.0, cols.astype(jnp.float32))
    ty = _slab(gy, dy, 0.0, rows.astype(jnp.float32))
    tz = _slab(o[2], d[2], 0.0, top)
    t_in = jnp.maximum(jnp.maximum(tx[0], ty[0]), jnp.maximum(tz[0], 0.0))
    t_out = jnp.minimum(jnp.minimum(tx[1], ty[1]), jnp.minimum(tz[1], t_max))
    axis = jnp.where((tx[0] >= ty[0]) & (tx[0] >= tz[0]), 0, jnp.where(ty[0] >= tz[0], 1, 2))
    j = jnp.clip(jnp.floor(gx + t_in * dx), 0, cols - 1).astype(jnp.int32)
    i = jnp.clip(jnp.floor(gy + t_in * dy), 0, rows - 1).astype(jnp.int32)
    step_j, step_i = jnp.where(dx > 0, 1, -1), jnp.where(dy > 0, 1, -1)
    inv_dx = jnp.where(jnp.abs(dx) < _EPS, 0.0, 1.0 / jnp.where(jnp.abs(dx) < _EPS, 1.0, dx))
    inv_dy = jnp.where(jnp.abs(dy) < _EPS, 0.0, 1.0 / jnp.where(jnp.abs(dy) < _EPS, 1.0, dy))

    def body(s):
        n, i, j, t, axis, geom, active = s
        g = grid[i, j]
        hit = active & (g >= 0)
        nx = jnp.where(inv_dx == 0, jnp.inf, (j + (dx > 0) - gx) * inv_dx)  # next column boundary
        ny = jnp.where(inv_dy == 0, jnp.inf, (i + (dy > 0) - gy) * inv_dy)
        go_x = nx < ny
        t_next = jnp.minimum(nx, ny)
        move = active & ~hit
        j = jnp.where(move & go_x, j + step_j, j)
        i = jnp.where(move & ~go_x, i + step_i, i)
        inside = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        return (n + 1, jnp.clip(i, 0, rows - 1), jnp.clip(j, 0, cols - 1),
                jnp.where(move, t_next, t), jnp.where(move, jnp.where(go_x, 0, 1), axis),
                jnp.where(hit, g, geom), move & inside & (t_next <= t_out))

    init = (0, i, j, t_in, axis, -jnp.ones_like(i), t_in <= t_out)
    _, _, _, t, axis, geom, _ = jax.lax.while_loop(
        lambda s: (s[0] < max_steps) & jnp.any(s[6]), body, init)
    return jnp.where(geom >= 0, t, jnp.inf), geom, axis


def _light_poses(scene, geom_xpos, geom_xmat, body_xpos, body_xmat):
    """World position and direction (L, 3) of each light, from its body pose or an anchor geom's."""
    if body_xpos is not None:
        pos, mat = body_xpos[scene.light_body], body_xmat.reshape(-1, 3, 3)[scene.light_body]
    else:  # body frame = anchor geom frame ∘ (geom pose in body)⁻¹; world-body lights: fixed
        a = jnp.maximum(scene.light_anchor, 0)
        mat = geom_xmat[a] @ jnp.swapaxes(scene.anchor_mat, -1, -2)
        pos = geom_xpos[a] - jnp.einsum("lij,lj->li", mat, scene.anchor_pos)
        world = (scene.light_anchor < 0)[:, None]
        pos = jnp.where(world, 0.0, pos)
        mat = jnp.where(world[..., None], jnp.eye(3), mat)
    rotate = lambda v: jnp.einsum("lij,lj->li", mat, v)
    return pos + rotate(scene.light_pos), rotate(scene.light_dir)


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cast_rays(scene: RenderScene, geom_xpos: jax.Array, geom_xmat: jax.Array, origins: jax.Array,
              dirs: jax.Array, exclude_geom: int | jax.Array = -1,
              wall_material: jax.Array | None = None, body_xpos: jax.Array | None = None,
              body_xmat: jax.Array | None = None, ray_dx: jax.Array | None = None,
              ray_dy: jax.Array | None = None,
              view_axis: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Nearest hit of each ray: rgb (N, 3) in [0, 1], depth (N,) (inf on a miss), geom (N,) (-1).

    origins, dirs: (N, 3) world frame, dirs unit. geom_xpos (ngeom, 3), geom_xmat (ngeom, 3, 3) or
    (ngeom, 9) as in mjx Data. exclude_geom: a sphere geom the rays ignore (the agent's own).
    wall_material: optional (ngeom,) material id per geom overriding the model's (-1: keep it).
    Lights move with their bodies: pass body_xpos/body_xmat (mjx `d.xpos`, `d.xmat`), or leave them
    None to pose each light's body from a geom on it (geom_xpos/geom_xmat); world-body lights are
    static. Directional and point lights (spot lights are lit as point lights, no cone); no shadows,
    no specular. Misses get the scene's background colour.
    view_axis: optional (N, 3) optical axis of each ray's camera (a pinhole at the ray's origin):
    MuJoCo's headlight is a directional light along it. None: along each ray (right for parallel
    rays, e.g. an orthographic view).
    ray_dx, ray_dy: optional (N, 3) footprints (need view_axis): the steps between neighbouring
    sub-rays along image columns and rows on the camera's image plane at unit distance
    (`camera_rays(..., differentials=True)`); the ray's direction changes by (d·view_axis)·step
    across its footprint. Textures are box-filtered over it; without them, over 0.1 texel.
    """
    # Vectors are (x, y, z) tuples of (N,) arrays: plain elementwise code, fast on CPU and GPU.
    f32 = jnp.float32
    xpos, xmat = geom_xpos.astype(f32), geom_xmat.reshape(-1, 9).astype(f32)
    o = tuple(origins[:, k].astype(f32) for k in range(3))
    d = tuple(dirs[:, k].astype(f32) for k in range(3))

    # Floor: one-sided plane, finite as in MuJoCo. kind: 0 floor, 1 sphere, 2/3/4 wall face x/y/top.
    fz, fx, fy, hx, hy = (scene.floor[k] for k in range(5))
    down = d[2] < -_EPS
    t = (fz - o[2]) / jnp.where(down, d[2], -1.0)
    inside = (jnp.abs(o[0] + t * d[0] - fx) <= hx) & (jnp.abs(o[1] + t * d[1] - fy) <= hy)
    ok = down & (t >= 0) & inside
    t = jnp.where(ok, t, jnp.inf)
    geom = jnp.where(ok, scene.floor_geom, -1)
    kind = jnp.zeros_like(geom)
    sphere = jnp.zeros_like(geom)  # index into scene.sphere_geom of a sphere hit

    # Spheres: nearest non-negative root (the far one when starting inside). The discriminant from
    # the ray's closest approach q is stable in float32 for far, grazing rays (b² − c is not).
    centres = xpos[scene.sphere_geom]
    for s in range(scene.sphere_geom.shape[0]):
        oc = tuple(o[k] - centres[s, k] for k in range(3))
        b = _dot(oc, d)
        q = tuple(oc[k] - b * d[k] for k in range(3))
        disc = scene.sphere_radius[s] ** 2 - _dot(q, q)
        root = jnp.sqrt(jnp.maximum(disc, 0.0))
        ts = jnp.where(-b - root >= 0, -b - root, -b + root)
        closer = (disc >= 0) & (ts >= 0) & (ts < t) & (scene.sphere_geom[s] != exclude_geom)
        t, geom = jnp.where(closer, ts, t), jnp.where(closer, scene.sphere_geom[s], geom)
        kind, sphere = jnp.where(closer, 1, kind), jnp.where(closer, s, sphere)

    # Walls: DDA through every maze's grid, only up to the nearest hit so far.
    trace = lambda *maze: _trace_maze(*maze, scene.max_steps, o, d, t)
    t_wall, g_wall, ax_wall = jax.vmap(trace)(scene.grid, scene.grid_corner, scene.grid_scale,
                                              scene.grid_shape, scene.wall_top)
    for m in range(t_wall.shape[0]):
        closer = t_wall[m] < t
        t, geom, kind = (jnp.where(closer, t_wall[m], t), jnp.where(closer, g_wall[m], geom),
                         jnp.where(closer, 2 + ax_wall[m], kind))

    # Hit point, surface normal and texture coordinates.
    hit = geom >= 0
    p = tuple(o[k] + jnp.where(hit, t, 0.0) * d[k] for k in range(3))
    c = tuple(centres[sphere, k] for k in range(3))
    rel = tuple(p[k] - c[k] for k in range(3))
    rel = tuple(r / jnp.maximum(jnp.sqrt(_dot(rel, rel)), _EPS) for r in rel)
    rot = xmat[scene.sphere_geom][sphere]  # (N, 9) row-major world-from-local
    local = tuple(rot[:, k] * rel[0] + rot[:, 3 + k] * rel[1] + rot[:, 6 + k] * rel[2]
                  for k in range(3))
    face = lambda k: jnp.where(kind == 2 + k, -jnp.sign(d[k]), 0.0)
    normal = tuple(jnp.where(kind == 1, rel[k], face(k)) for k in range(3))
    normal = (normal[0], normal[1], jnp.where(kind == 0, 1.0, normal[2]))
    u = jnp.where(kind == 1, jnp.arctan2(local[1], local[0]) / (2 * jnp.pi) + 0.5,
                  jnp.where(kind == 2, p[1], p[0]))
    v = jnp.where(kind == 1, jnp.arccos(jnp.clip(local[2], -1.0, 1.0)) / jnp.pi,
                  jnp.where((kind == 0) | (kind == 4), p[1], p[2]))

    # Material, texture and base colour.
    g = jnp.maximum(geom, 0)
    mat = scene.geom_matid[g]
    if wall_material is not None:
        mat = jnp.where(wall_material[g] >= 0, wall_material[g], mat)
    no_mat = scene.mat_rgba.shape[0] - 1  # last row: no material
    mat = jnp.where(mat >= 0, mat, no_mat)
    tex = scene.mat_texid[mat]
    ti = jnp.maximum(tex, 0)
    rep_u, rep_v = scene.mat_texrepeat[mat, 0], scene.mat_texrepeat[mat, 1]
    along_v = scene.tex_axis[ti] == 1
    length = scene.prof_len[ti]
    texels_per = jnp.where(along_v, rep_v, rep_u) * length.astype(f32)  # texels per unit of u or v
    w = jnp.where(along_v, v, u) * texels_per  # texel coordinate along the profile

    # Footprint: ray differentials transferred to the hit's tangent plane, dP = t·(dd − d·(n·dd)/
    # (n·d)), then to texels along the profile through G = ∇_P w (the texel coordinate's gradient on
    # the surface): a = |G·dP| = t·|G·dd − (G·d)(n·dd)/(n·d)|.
    if ray_dx is not None:
        nd = _dot(normal, d)
        nd = jnp.where(nd < 0, jnp.minimum(nd, -1e-3), jnp.maximum(nd, 1e-3))  # grazing: ≤ 1000×
        radius = scene.sphere_radius[sphere]
        rho2 = jnp.maximum(local[0] ** 2 + local[1] ** 2, 1e-8)
        # Sphere: ∂w/∂(local unit point), u = atan2(l1, l0)/2π + ½, v = acos(l2)/π; world = R·that/r.
        inv_u, inv_v = 1.0 / (2 * jnp.pi * rho2), -1.0 / (jnp.pi * jnp.sqrt(rho2))
        gl = (jnp.where(along_v, 0.0, -local[1] * inv_u), jnp.where(along_v, 0.0, local[0] * inv_u),
              jnp.where(along_v, inv_v, 0.0))
        scale = texels_per / radius
        g_sphere = tuple((rot[:, 3 * k] * gl[0] + rot[:, 3 * k + 1] * gl[1] + rot[:, 3 * k + 2] * gl[2])
                         * scale for k in range(3))
        # Plane and box faces: w follows one world axis (u: x, or y on x faces; v: z, or y on the
        # floor and wall tops).
        axis = jnp.where(along_v, jnp.where((kind == 0) | (kind == 4), 1, 2), jnp.where(kind == 2, 1, 0))
        grad = tuple(jnp.where(kind == 1, g_sphere[k], jnp.where(axis == k, texels_per, 0.0))
                     for k in range(3))
        if view_axis is None:
            raise ValueError("ray_dx/ray_dy are image-plane steps: pass the cameras' view_axis too")
        th = jnp.where(hit, t, 0.0) * _dot(d, tuple(view_axis[:, k].astype(f32) for k in range(3)))
        c = _dot(grad, d) / nd

        def texel_offset(step):  # the direction changes by (d·axis)·step (folded into th)
            step = tuple(step[:, k].astype(f32) for k in range(3))
            off = jnp.abs(th * (_dot(grad, step) - c * _dot(normal, step)))
            return jnp.where(jnp.isfinite(off), jnp.minimum(off, 1e6), 1e6)

        fa, fb = texel_offset(ray_dx), texel_offset(ray_dy)
    else:
        fa = fb = jnp.zeros_like(t)
    fa, fb = jnp.maximum(fa, _MIN_FOOTPRINT), jnp.maximum(fb, _MIN_FOOTPRINT)
    lf = length.astype(f32)
    w = w - lf * jnp.floor(w / lf)  # one period: the four points below keep their precision
    pp, qq = (fa + fb) / 2, (fa - fb) / 2

    # Square waves (stripes): closed form, no table reads. In stripe units y (period 2), the
    # zero-mean wave ∓½ has the periodic second antiderivative F2(y) = e(1 − |e|)/4,
    # e = 1 − (y mod 2) (φ(1 − φ)/4 on even stripes, its negative on odd ones), so the box-filtered
    # fraction of odd stripe is ½ + [F2(y + p) − F2(y + q) − F2(y − q) + F2(y − p)] / (|a||b|).
    inv_k = 1.0 / scene.tex_stripe[ti]
    y = w * inv_k
    y = y - 2.0 * jnp.floor(0.5 * y)  # [0, 2): one period, so the four points keep their precision
    sp, sq = pp * inv_k, qq * inv_k

    def f2_square(x):
        e = 1.0 - (x - 2.0 * jnp.floor(0.5 * x))
        return e * (1.0 - jnp.abs(e))

    odd = 0.5 + 0.25 * (f2_square(y + sp) - f2_square(y + sq) - f2_square(y - sq)
                        + f2_square(y - sp)) / ((fa * inv_k) * (fb * inv_k))
    colours = scene.tex_colours[ti]
    texel = colours[:, 0] + (colours[:, 1] - colours[:, 0]) * odd[:, None]

    if scene.has_table_textures:  # other 1D textures: per-texel tables of F2
        adr, last = scene.prof_adr[ti], length - 1

        def f2(x):  # F2 at texel coordinate x (periodic)
            x = x - lf * jnp.floor(x / lf)
            j = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, last)
            phi = (x - j)[:, None]
            row = scene.prof[adr + j]
            return row[:, 0:3] + row[:, 3:6] * phi + row[:, 6:9] * (phi * phi / 2)

        table = scene.tex_mean[ti] + (f2(w + pp) - f2(w + qq) - f2(w - qq) + f2(w - pp)) / (fa * fb)[:, None]
        texel = jnp.where(scene.tex_square[ti][:, None], texel, table)
    if scene.has_2d_textures:  # nearest texel, unfiltered
        h, wd = scene.tex_size[ti, 0], scene.tex_size[ti, 1]
        uu, vv = u * rep_u, v * rep_v
        row = jnp.clip(jnp.floor((vv - jnp.floor(vv)) * h).astype(jnp.int32), 0, h - 1)
        col = jnp.clip(jnp.floor((uu - jnp.floor(uu)) * wd).astype(jnp.int32), 0, wd - 1)
        nearest = scene.texels[scene.tex_adr[ti] + row * wd + col]
        texel = jnp.where((scene.tex_axis[ti] == 2)[:, None], nearest, texel)
    texel = jnp.where((tex >= 0)[:, None], jnp.clip(texel, 0.0, 1.0), 1.0)
    rgba = jnp.where((scene.geom_tint[g] | (mat == no_mat))[:, None], scene.geom_rgba[g],
                     scene.mat_rgba[mat])

    # Shading, MuJoCo's without specular: emission + headlight + Σ lights (ambient + diffuse·
    # max(0, n·L))·attenuation. Linear in per-ray features, so light (N, 3) = F (N, 3 + 2L) @ W:
    # the matmul keeps XLA from recomputing the features once per colour channel. As in MuJoCo's
    # fixed-function pipeline, the lit colour is clipped, then modulated by the (filtered) texel.
    lpos, ldir = _light_poses(scene, xpos, xmat.reshape(-1, 3, 3), body_xpos, body_xmat)
    head = d if view_axis is None else tuple(view_axis[:, k].astype(f32) for k in range(3))
    feats = [scene.mat_emission[mat], jnp.ones_like(t), jnp.maximum(-_dot(normal, head), 0.0)]
    ws = [jnp.ones(3), scene.headlight[0], scene.headlight[1]]
    for i in range(lpos.shape[0]):
        to = tuple(lpos[i, k] - p[k] for k in range(3))
        dist = jnp.sqrt(_dot(to, to))
        a0, a1, a2 = (scene.light_attenuation[i, k] for k in range(3))
        point_ndotl = _dot(normal, to) / jnp.maximum(dist, _EPS)
        ndotl = jnp.where(scene.light_directional[i], -_dot(normal, tuple(ldir[i])), point_ndotl)
        atten = jnp.where(scene.light_directional[i], 1.0,
                          1.0 / (a0 + a1 * dist + a2 * dist * dist))
        feats += [atten, jnp.maximum(ndotl, 0.0) * atten]
        ws += [scene.light_ambient[i], scene.light_diffuse[i]]
    light = jnp.matmul(jnp.stack(feats, -1), jnp.stack(ws), precision=jax.lax.Precision.HIGHEST)
    rgb = jnp.clip(rgba * light, 0.0, 1.0) * texel
    rgb = jnp.where(hit[:, None], rgb, scene.background)
    return rgb.astype(f32), jnp.where(hit, t, jnp.inf).astype(f32), geom.astype(jnp.int32)
