"""Ray caster: agreement with native mj_ray, stripe orientation, hidden groups, jit/vmap, lights;
texture filtering by ray footprint; agreement with MuJoCo's own renderer."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from omegaconf import OmegaConf

import aci_jax.config as C
from aci_jax.eyes.geometry import EyeBuffer, EyeParams, camera_rays, eye_rays, lookat_rays
from aci_jax.eyes.render import cast_rays, make_render_scene
from aci_jax.world.scene import MARKER_GROUP, PROXY_GROUP, build_world

GEOMGROUP = np.array([1, 1, 0, 0, 1, 1], np.uint8)  # eyes never see groups 2 (markers), 3 (proxies)
N_POSES, N_RAYS = 20, 200

WORLDS = {
    "OPEN": ("detection", [], False),
    "COMPLEX": ("navigation", [], False),
    "COMPLEX_LARGE": ("navigation", [], True),
    "STRAIGHT": ("navigation", ["~env.mazes.COMPLEX", "+maze@env.mazes.STRAIGHT=STRAIGHT"], False),
    "COMPLEX+STRAIGHT": ("navigation", ["+maze@env.mazes.STRAIGHT=STRAIGHT"], False),  # padding
    "OPEN_ACI": ("detection", ["agent@env.agents.adversary=adversary_aci"], False),
}


@pytest.fixture(scope="module")
def worlds():
    return {k: build_world(C.env_config(C.load_config(exp, ov), eval=ev))
            for k, (exp, ov, ev) in WORLDS.items()}


def _free_xy(world, rng, margin):
    """A random point inside a random free cell of a random maze, `margin` away from its edges."""
    mi = world.mazes[rng.integers(len(world.mazes))]
    free = np.argwhere(~mi.maze.wall)
    i, j = free[rng.integers(len(free))]
    return mi.cell_world(i, j) + rng.uniform(-1, 1, 2) * (mi.maze.scale / 2 - margin)


def _data(world, proxy=None, **objects):
    """MjData with objects at the given xyz (others parked out of sight), after mj_forward."""
    d = mujoco.MjData(world.model)
    for name, o in world.objects.items():
        d.mocap_pos[o.mocap] = objects.get(name, [50.0, 50.0, -10.0])
    if proxy is not None:
        d.mocap_pos[world.proxy_mocap[0, 0]] = proxy
    mujoco.mj_forward(world.model, d)
    return d


def _random_pose(world, rng):
    """MjData with the agent and the objects at random free positions, after mj_forward."""
    m = world.model
    d = mujoco.MjData(m)
    a = world.agents["agent"]
    d.qpos[a.qpos_adr] = [*_free_xy(world, rng, a.radius), rng.uniform(-np.pi, np.pi)]
    for o in world.objects.values():
        d.mocap_pos[o.mocap] = [*_free_xy(world, rng, o.radius), o.radius]
    mujoco.mj_forward(m, d)
    return d


def _fan(world, d, rng, n=N_RAYS):
    """Rays from the agent sphere's surface: mostly near-horizontal, some steep, 10% at objects."""
    agent = world.agents["agent"]
    yaw = rng.uniform(-np.pi, np.pi, n)
    el = np.where(rng.random(n) < 0.8, rng.normal(0, 0.15, n), rng.uniform(-1.5, 1.5, n))
    dirs = np.stack([np.cos(el) * np.cos(yaw), np.cos(el) * np.sin(yaw), np.sin(el)], -1)
    objects = list(world.objects.values())
    for k in range(n - n // 10, n):
        o = objects[rng.integers(len(objects))]
        v = d.geom_xpos[o.geom] + rng.uniform(-o.radius, o.radius, 3) - d.geom_xpos[agent.geom]
        dirs[k] = v / np.linalg.norm(v)
    return d.geom_xpos[agent.geom] + dirs * agent.radius, dirs


_single = jax.jit(cast_rays)
_batched = jax.jit(jax.vmap(cast_rays, in_axes=(None, 0, 0, 0, 0, None)))
PAD = 256  # rays per `_cast` call, so tests share compilations


def _cast(scene, d, o, v, exclude_geom=-1, wall_material=None, **kw):
    """cast_rays on one MjData, rays padded to PAD (and the optional arguments always passed)."""
    n = len(o)
    o, v = (np.concatenate([x, np.tile([[0.0, 0.0, 1.0]], (PAD - n, 1))]) for x in (o, v))
    if wall_material is None:
        wall_material = np.full(len(d.geom_xpos), -1, np.int32)
    out = _single(scene, jnp.asarray(d.geom_xpos), jnp.asarray(d.geom_xmat), jnp.asarray(o),
                  jnp.asarray(v), exclude_geom, jnp.asarray(wall_material), **kw)
    return tuple(np.asarray(x[:n]) for x in out)


@pytest.mark.parametrize("name", list(WORLDS))
def test_matches_mj_ray(worlds, name):
    world = worlds[name]
    m, a = world.model, world.agents["agent"]
    scene = make_render_scene(world)
    rng = np.random.default_rng(0)
    datas = [_random_pose(world, rng) for _ in range(N_POSES)]
    rays = [_fan(world, d, rng) for d in datas]
    stack = lambda f: jnp.asarray(np.stack([f(d, r) for d, r in zip(datas, rays)]))
    _, depth, geom = _batched(scene, stack(lambda d, r: d.geom_xpos),
                              stack(lambda d, r: d.geom_xmat), stack(lambda d, r: r[0]),
                              stack(lambda d, r: r[1]), a.geom)
    depth, geom = np.asarray(depth), np.asarray(geom)
    gid = np.zeros(1, np.int32)
    ref_t, ref_g = np.zeros_like(depth, dtype=float), np.zeros_like(geom)
    for p, (d, (o, v)) in enumerate(zip(datas, rays)):
        for k in range(N_RAYS):
            ref_t[p, k] = mujoco.mj_ray(m, d, o[k], v[k], GEOMGROUP, 1, a.body, gid)
            ref_g[p, k] = gid[0]
    assert np.mean(geom == ref_g) >= 0.99
    both = (geom >= 0) & (ref_g >= 0)
    assert np.all(np.abs(depth[both] - ref_t[both]) < 1e-3)
    assert np.all(np.isinf(depth[geom < 0]))
    hidden = np.nonzero(np.isin(m.geom_group, [MARKER_GROUP, PROXY_GROUP]))[0]
    assert not np.isin(geom, hidden).any()
    assert (geom >= 0).mean() > 0.5 and np.isin(geom, world.wall_geoms).any()


def _sphere_image(world, name, n=9, azimuth=90.0):
    """An n×n ray grid at an object sphere 2 m away, seen looking along the horizontal direction at
    `azimuth` degrees from +x (default +y; rows: z, columns: across)."""
    o = world.objects[name]
    d = _data(world, **{name: [0.0, 0.0, o.radius]})
    s = np.linspace(-0.3, 0.3, n) * o.radius
    zz, aa = np.meshgrid(s, s, indexing="ij")
    a = np.deg2rad(azimuth)
    look, across = np.array([np.cos(a), np.sin(a), 0.0]), np.array([np.sin(a), -np.cos(a), 0.0])
    target = (aa[..., None] * across + zz[..., None] * [0, 0, 1] + [0, 0, o.radius]).reshape(-1, 3)
    eye = np.array([0.0, 0.0, o.radius]) - 2.0 * look
    v = (target - eye) / np.linalg.norm(target - eye, axis=-1, keepdims=True)
    rgb, _, geom = _cast(make_render_scene(world), d, np.broadcast_to(eye, v.shape), v)
    assert np.all(np.asarray(geom) == o.geom)
    return np.asarray(rgb).reshape(n, n, 3)


@pytest.mark.parametrize("azimuth", [0.0, 45.0, 90.0, 180.0, 270.0])
def test_stripe_orientation(worlds, azimuth):
    """From every horizontal direction: the upright goal shows vertical stripes (colour changes
    across columns), the default adversary's latitude bands read horizontal (across rows). ACI's
    turned adversary reads horizontal side-on (±y) but not along its poles (±x), where its meridians
    radiate from the pole (a wide, short eye such as detection's 45°×10° sees them vertical)."""
    var = lambda img, ax: np.abs(np.diff(img, axis=ax)).sum()
    goal = _sphere_image(worlds["OPEN"], "goal", azimuth=azimuth)
    adv = _sphere_image(worlds["OPEN"], "adversary", azimuth=azimuth)
    assert var(goal, 1) > 5 * var(goal, 0)
    assert var(adv, 0) > 5 * var(adv, 1)
    aci = _sphere_image(worlds["OPEN_ACI"], "adversary", azimuth=azimuth)
    if azimuth in (90.0, 270.0):
        assert var(aci, 0) > 5 * var(aci, 1)
    elif azimuth in (0.0, 180.0):
        assert var(aci, 1) > 0.5 * var(aci, 0)


def test_hidden_groups_background_exclude(worlds):
    world = worlds["OPEN"]
    m, a, goal = world.model, world.agents["agent"], world.objects["goal"]
    d = _data(world, proxy=[1.0, 0.0, 0.5], goal=[2.0, 0.0, goal.radius])  # proxy box in between
    scene = make_render_scene(world, background=(0.2, 0.3, 0.4))
    centre, target = d.geom_xpos[a.geom], d.geom_xpos[goal.geom]
    marker = target + [0, 0, goal.radius + 0.2]
    v = np.array([target - centre, marker - centre, [0, 0, 1]])
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    o = np.broadcast_to(centre, v.shape)
    rgb, depth, geom = _cast(scene, d, o, v, exclude_geom=a.geom)
    expected = np.linalg.norm(target - centre) - goal.radius
    assert geom[0] == goal.geom and depth[0] == pytest.approx(expected, abs=1e-4)
    assert geom[1] != m.geom("goal_marker").id  # the marker is passed through
    assert geom[2] == -1 and np.isinf(depth[2]) and np.allclose(rgb[2], [0.2, 0.3, 0.4])
    _, depth, geom = _cast(scene, d, o, v)  # not excluded: hit from inside
    assert np.all(geom == a.geom) and np.allclose(depth, a.radius, atol=1e-5)


def test_wall_material_override(worlds):
    world = worlds["OPEN"]
    m, d = world.model, _data(world)
    yaw = np.linspace(0, 0.5, 64)
    o, v = np.zeros((64, 3)) + [0, 0, 0.5], np.stack([np.cos(yaw), np.sin(yaw), 0 * yaw], -1)
    rgb0, _, geom = _cast(make_render_scene(world), d, o, v)
    assert np.isin(geom, world.wall_geoms).all()
    red = np.full(m.ngeom, -1, np.int32)
    red[world.wall_geoms] = m.geom_matid[world.objects["goal"].geom]  # red/blue stripes, green rgba
    rgb1, _, _ = _cast(make_render_scene(world), d, o, v, wall_material=red)
    assert np.all(rgb0[:, 0] == rgb0[:, 1]) and not np.all(rgb1[:, 0] == rgb1[:, 1])


def test_jit_vmap_batch(worlds):
    """A vmapped batch of poses equals the poses cast one by one."""
    world = worlds["COMPLEX"]
    a, scene = world.agents["agent"], make_render_scene(world)
    rng = np.random.default_rng(1)
    datas = [_random_pose(world, rng) for _ in range(N_POSES)]  # shapes as in test_matches_mj_ray
    rays = [_fan(world, d, rng) for d in datas]
    batch = _batched(scene, *(jnp.asarray(np.stack(x)) for x in zip(
        *[(d.geom_xpos, d.geom_xmat, o, v) for d, (o, v) in zip(datas, rays)])), a.geom)
    for p in range(3):
        single = _cast(scene, datas[p], *rays[p], exclude_geom=a.geom)
        for b, s in zip(batch, single):
            np.testing.assert_allclose(b[p], s, atol=1e-5)


def test_point_light_brightens():
    cfg = C.load_config("detection")
    env = C.env_config(cfg)
    env.agents.light = OmegaConf.load(C.CONFIG_DIR / "agent" / "light.yaml")
    world = build_world(env)
    model = copy.deepcopy(world.model)
    model.mat_emission[:] = 0.0  # walls glow fully otherwise
    world = dataclasses.replace(world, model=model)
    light = world.objects["light"]
    mi = world.mazes[0]
    near_wall = mi.cell_world(5, 1) + [-0.6, 0]  # left part of a free cell next to the left wall
    d = _data(world, light=[*near_wall, 0.5])
    scene = make_render_scene(world)
    wall_x = mi.cell_world(5, 0)[0] + mi.maze.scale / 2
    y = near_wall[1] + np.linspace(-1, 1, 40, endpoint=False)  # one texture period of the wall
    wall_o = [np.stack([np.full(40, wall_x + 1.0), y + dy, np.full(40, 0.5)], -1) for dy in (0, 6)]
    floor_o = [[*near_wall + [0.8, dy], 1.0] for dy in (0, 6)]
    o = np.concatenate([*wall_o, floor_o])
    v = np.array([[-1.0, 0, 0]] * 80 + [[0, 0, -1.0]] * 2)
    rgb, _, geom = _cast(scene, d, o, v, exclude_geom=light.geom)
    assert np.all(geom[:80] == mi.cell_geom[5, 0]) and np.all(geom[80:] == world.floor_geom)
    assert rgb[:40].sum() > 1.3 * rgb[40:80].sum()  # the wall near the light vs 6 m away
    assert rgb[80].sum() > 1.2 * rgb[81].sum()  # the floor (no material)
    rgb_b, _, _ = _cast(scene, d, o, v, exclude_geom=light.geom, body_xpos=jnp.asarray(d.xpos),
                        body_xmat=jnp.asarray(d.xmat))
    np.testing.assert_allclose(rgb_b, rgb, atol=1e-5)


# -- Texture filtering by ray footprint, and agreement with MuJoCo's own renderer ---------------------

WALL_X = -7.0  # OPEN's left border wall face (x face: u = y·texrepeat, texrepeat 1/scale = 0.5)
STRIPE = 0.1  # m: vertical_10 (black/white) on a 2 m cell; stripe k covers y ∈ [k, k+1)·0.1, odd white
FACING_WALL = jnp.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T  # forward −x, left −y


def _white_fraction(y0, y1):
    """Exact fraction of [y0, y1] covered by white stripes (the box filter of the square wave)."""
    period = 2 * STRIPE
    cum = lambda y: np.floor(y / period) * STRIPE + np.clip(np.mod(y, period) - STRIPE, 0, STRIPE)
    return (cum(y1) - cum(y0)) / (y1 - y0)


def _cast_camera(scene, d, eye, frame, fov, res, s, differentials=True, exclude_geom=-1):
    """One pinhole camera's image (res[1], res[0], 3): its s² rays per pixel cast through `_cast_fp`,
    with footprints from fov/resolution/supersample (or none: 0.1-texel boxes, like point samples)."""
    dirs, step_x, step_y = camera_rays(frame, jnp.asarray(fov, jnp.float32), jnp.asarray(res), max(res), s,
                                       differentials=True)
    n = dirs.shape[0] * dirs.shape[1] * s * s
    per_ray = lambda x: np.broadcast_to(np.asarray(x, np.float32), (n, 3))
    if not differentials:
        step_x = step_y = np.zeros(3)
    rgb, _, geom = _cast_fp(scene, d, per_ray(eye), np.asarray(dirs).reshape(-1, 3), per_ray(step_x),
                            per_ray(step_y), per_ray(frame[:, 0]), exclude_geom)
    r = max(res)
    img = rgb.reshape(r, r, s * s, 3).mean(2)[:res[1], :res[0]]
    return img, geom.reshape(r, r, s * s)[:res[1], :res[0]]


_single_fp = jax.jit(lambda scene, xpos, xmat, o, v, dx, dy, axis, ex: cast_rays(
    scene, xpos, xmat, o, v, ex, ray_dx=dx, ray_dy=dy, view_axis=axis))
PAD_FP = 1024


def _cast_fp(scene, d, o, v, dx, dy, axis, exclude_geom=-1):
    """cast_rays with footprints and the headlight axis, padded to PAD_FP rays (one compilation)."""
    n = len(o)
    assert n <= PAD_FP
    pad = lambda x, fill: np.concatenate([x, np.tile([fill], (PAD_FP - n, 1))]).astype(np.float32)
    out = _single_fp(scene, jnp.asarray(d.geom_xpos), jnp.asarray(d.geom_xmat), pad(o, [0.0, 0, 0]),
                     pad(v, [0.0, 0, 1]), pad(dx, [0.0, 0, 0]), pad(dy, [0.0, 0, 0]),
                     pad(axis, [0.0, 0, 1]), exclude_geom)
    return tuple(np.asarray(x[:n]) for x in out)


@pytest.fixture(scope="module")
def open_scene(worlds):
    world = worlds["OPEN"]
    return world, make_render_scene(world), _data(world)


@pytest.mark.parametrize("s", [1, 2, 4])
def test_pixel_spanning_many_stripes_is_their_mean(open_scene, s):
    """A pixel 45° wide at 12 m spans ~50 stripe periods of the wall: it shows their mean colour
    (0.5 grey) within 2%, whatever the sub-ray count; nearest-texel sampling shows a stripe."""
    world, scene, d = open_scene
    eye = [WALL_X + 12.0, 0.33, 0.5]
    img, geom = _cast_camera(scene, d, eye, FACING_WALL, [45.0, 1.0], [1, 1], s)
    assert np.isin(geom, world.wall_geoms).all()
    np.testing.assert_allclose(img[0, 0], 0.5, rtol=0.02)
    half = 12.0 * np.tan(np.deg2rad(22.5))
    np.testing.assert_allclose(img[0, 0], _white_fraction(0.33 - half, 0.33 + half), atol=2e-3)
    if s == 1:  # the same ray without a footprint: one stripe's colour, black or white
        point, _ = _cast_camera(scene, d, eye, FACING_WALL, [45.0, 1.0], [1, 1], s, differentials=False)
        assert np.abs(point[0, 0] - 0.5).min() > 0.45


@pytest.mark.parametrize("s", [1, 2, 4])
def test_pixel_inside_one_stripe_is_that_stripe(open_scene, s):
    """A 1° pixel at 0.5 m (9 mm across) inside a 10 cm stripe shows exactly its colour; so does
    one inside a red stripe of the goal sphere."""
    world, scene, d = open_scene
    for y, colour in ((0.05, 0.0), (0.15, 1.0), (-0.25, 1.0)):
        img, _ = _cast_camera(scene, d, [WALL_X + 0.5, y, 0.5], FACING_WALL, [1.0, 1.0], [1, 1], s)
        np.testing.assert_allclose(img[0, 0], colour, atol=1e-3)
    # Goal (upright, vertical_8_rb): u = longitude/2π + ½, 64 texels, stripes of 4 texels, even red.
    goal = world.objects["goal"]
    dg = _data(world, goal=[0.0, 0.0, goal.radius])
    lon = (18 / 64 - 0.5) * 2 * np.pi  # the middle of stripe 4 (red)
    out = np.array([np.cos(lon), np.sin(lon), 0.0])
    eye = np.array([0.0, 0.0, goal.radius]) + 1.5 * out
    frame = jnp.asarray(np.stack([-out, [np.sin(lon), -np.cos(lon), 0.0], [0, 0, 1.0]], -1))
    img, geom = _cast_camera(scene, dg, eye, frame, [1.0, 1.0], [1, 1], s)
    assert (geom == goal.geom).all()
    np.testing.assert_allclose(img[0, 0], [1.0, 0.0, 0.0], atol=1e-3)


def test_other_1d_textures_are_filtered_from_tables(worlds):
    """A 1D texture that is not a square wave (here the walls' texture replaced by a 0, ½, 1, 1 ramp
    per 4 texels) is box-filtered through per-texel tables: its mean over many periods, one texel's
    own colour inside it."""
    world = worlds["OPEN"]
    model = copy.deepcopy(world.model)
    t = model.texture("vertical_10").id
    h, w, adr = model.tex_height[t], model.tex_width[t], model.tex_adr[t]
    ramp = np.array([0, 128, 255, 255], np.uint8)[np.arange(w) % 4]
    model.tex_data[adr:adr + h * w * 3] = np.repeat(np.broadcast_to(ramp, (h, w)).reshape(-1), 3)
    world = dataclasses.replace(world, model=model)
    scene = make_render_scene(world)
    assert scene.has_table_textures
    d = _data(world)
    img, _ = _cast_camera(scene, d, [WALL_X + 12.0, 0.33, 0.5], FACING_WALL, [45.0, 1.0], [1, 1], 2)
    np.testing.assert_allclose(img[0, 0], (128 / 255 + 2) / 4, rtol=0.02)
    texel = 0.025  # m: 80 texels per 2 m cell
    for j, value in ((0, 0.0), (1, 128 / 255), (2, 1.0)):
        y = (j + 8 + 0.5) * texel
        img, _ = _cast_camera(scene, d, [WALL_X + 0.2, y, 0.5], FACING_WALL, [0.5, 0.5], [1, 1], 2)
        np.testing.assert_allclose(img[0, 0], value, atol=2e-3)


def test_contrast_falls_off_with_distance_as_a_box_filter(open_scene):
    """A row of 16 pixels (60° wide) facing the wall: each pixel is the box filter of the stripes
    over its footprint (D·2·tan 30°/16 wide at distance D) within 0.02, so the row's contrast falls
    with distance as a box filter predicts: (P/2 − |r − P/2|)/W for footprint W, period P, r = W
    mod P (1 while W ≤ P/2, 0 at W = P, ≤ P/(2W) beyond)."""
    world, scene, d = open_scene
    res, tx, period = 16, np.tan(np.deg2rad(30.0)), 2 * STRIPE
    for dist in (1.0, 1.5, 2.0, 2.5, 4.0, 6.0, 9.0, 12.0):
        y0 = 0.013
        img, geom = _cast_camera(scene, d, [WALL_X + dist, y0, 0.5], FACING_WALL, [60.0, 0.5], [res, 1], 2)
        assert np.isin(geom, world.wall_geoms).all()
        edges = y0 + 2 * dist * tx * (np.arange(res + 1) / res - 0.5)
        expected = _white_fraction(edges[:-1], edges[1:])
        np.testing.assert_allclose(img[0, :, 0], expected, atol=0.02, err_msg=f"distance {dist}")
        w = edges[1] - edges[0]
        r = np.mod(w, period)
        bound = min(1.0, (period / 2 - abs(r - period / 2)) / w)
        contrast = img[0, :, 0].max() - img[0, :, 0].min()
        assert contrast <= bound + 0.02, (dist, contrast, bound)
        assert contrast >= bound - 0.12, (dist, contrast, bound)  # 16 pixels sample the phases


@pytest.mark.parametrize("s", [1, 2, 4])
def test_one_pixel_sees_goal_and_adversary_alike(open_scene, s):
    """A 1×1 eye (45°×45°, ACI's `simple` start) facing the goal or the adversary from generic
    directions sees the same brightness and purple for both, R ≈ B: no orientation or colour cue at
    one pixel (nearest-texel sampling differed by up to 1.0 per channel). At 1.75 m the physical
    pixel itself tilts towards red or blue by up to 0.07 (the stripe phase in view: the goal's with
    azimuth, the adversary's bands with the eye's height) and the first-order footprint of sub-rays
    near the sphere's limb adds up to 0.03: tolerance 0.06 there (R − B within twice that), 0.03 at
    2.5 m."""
    world, scene, _ = open_scene
    a = world.agents["agent"]
    p = EyeParams(jnp.array([1, 1]), jnp.array([1, 1]), jnp.array([45.0, 45.0]), jnp.zeros(2), jnp.zeros(2))
    flat = lambda x: np.asarray(x).reshape(-1, 3)
    checked = 0
    for dist, tol in ((1.75, 0.06), (2.5, 0.03)):
        for th in (0.3, 1.1, 2.0):
            seen, hit = {}, True
            for name in ("goal", "adversary"):
                o = world.objects[name]
                d = _data(world, **{name: [dist * np.cos(th), dist * np.sin(th), o.radius]})
                origins, dirs, step_x, step_y, axes = eye_rays(p, EyeBuffer(1, 1, s), jnp.array([0.0, 0.0, a.radius]),
                                                               jnp.float32(th), a.radius, differentials=True)
                per_ray = lambda x: np.broadcast_to(np.asarray(x[0]), (s * s, 3))
                rgb, _, geom = _cast_fp(scene, d, per_ray(origins), flat(dirs), per_ray(step_x), per_ray(step_y),
                                        per_ray(axes), a.geom)
                hit &= bool((geom == o.geom).any())  # 2×2 sub-rays pass beside a sphere 23° wide
                seen[name] = rgb.mean(0)
            if not hit:
                continue
            checked += 1
            g, adv = seen["goal"], seen["adversary"]
            assert abs(g[1] - adv[1]) < tol and abs((g[0] + g[2]) - (adv[0] + adv[2])) < tol, (dist, th, g, adv)
            for c in (g, adv):  # R ≈ B for both: what is left is the stripe phase in view
                assert abs(c[0] - c[2]) < 2 * tol, (dist, th, g, adv)
    assert checked >= 3


MUJOCO_RENDER = r"""
import json, sys
import numpy as np, mujoco
import aci_jax.config as C
from aci_jax.world.scene import build_world
views, out = json.loads(sys.argv[1]), sys.argv[2]
world = build_world(C.env_config(C.load_config("detection")))
m = world.model
renderer = mujoco.Renderer(m, 32, 32)
opt = mujoco.MjvOption()
opt.geomgroup[:] = [1, 1, 0, 0, 1, 1]
rgb, seg = [], []
for v in views:
    d = mujoco.MjData(m)
    for name, pos in v["objects"].items():
        d.mocap_pos[world.objects[name].mocap] = pos
    d.qpos[world.agents["agent"].qpos_adr] = [50.0, 50.0, 0.0]
    mujoco.mj_forward(m, d)
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:], cam.distance, cam.azimuth, cam.elevation = v["lookat"], v["distance"], v["azimuth"], v["elevation"]
    renderer.update_scene(d, cam, opt)
    rgb.append(renderer.render().copy())
    renderer.enable_segmentation_rendering()
    renderer.update_scene(d, cam, opt)
    seg.append(renderer.render()[..., 0].copy())
    renderer.disable_segmentation_rendering()
renderer.close()
np.savez(out, rgb=np.array(rgb), seg=np.array(seg), fovy=m.vis.global_.fovy)
"""

MUJOCO_VIEWS = [  # goal and adversary side by side, seen from 3 m and 5 m; a wall; the floor from above
    {"objects": {"goal": [0.0, 0.0, 0.5], "adversary": [1.5, 0.0, 0.5]}, "lookat": [0.75, 0.0, 0.5],
     "distance": 3.0, "azimuth": 90.0, "elevation": -5.0},
    {"objects": {"goal": [0.0, 0.0, 0.5], "adversary": [1.5, 0.0, 0.5]}, "lookat": [0.75, 0.0, 0.5],
     "distance": 5.0, "azimuth": 90.0, "elevation": -5.0},
    {"objects": {"goal": [0.0, 0.0, -5.0], "adversary": [1.5, 0.0, -5.0]}, "lookat": [0.0, 9.0, 0.5],
     "distance": 6.0, "azimuth": 90.0, "elevation": -10.0},
    {"objects": {"goal": [2.0, 0.0, 0.5], "adversary": [-2.0, 0.0, 0.5]}, "lookat": [0.0, 0.0, 0.0],
     "distance": 6.0, "azimuth": 90.0, "elevation": -60.0},
]


def test_mujoco_renders_the_model_as_aci_jax(worlds, tmp_path):
    """MuJoCo's own renderer (EGL, in a subprocess) and aci_jax's caster draw the built model alike:
    mean colour per object class (goal, adversary, walls, floor; pixels whose 3×3 neighbourhood is
    the same class in both) within 10% (+0.005 for near-black channels), with no tint on the goal
    or adversary (they look the same in MuJoCo too)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=os.pathsep.join(sys.path))
    out = tmp_path / "mujoco.npz"
    try:
        proc = subprocess.run([sys.executable, "-c", MUJOCO_RENDER, json.dumps(MUJOCO_VIEWS), str(out)],
                              env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("MuJoCo's EGL renderer did not answer within 120 s")
    if proc.returncode != 0:
        pytest.skip("no offscreen GL context for MuJoCo's renderer (MUJOCO_GL=egl): "
                    + (proc.stderr.strip().splitlines() or ["no message"])[-1])
    ref = np.load(out)
    world = worlds["OPEN"]
    scene = make_render_scene(world)
    classes = {"goal": [world.objects["goal"].geom], "adversary": [world.objects["adversary"].geom],
               "wall": list(world.wall_geoms), "floor": [world.floor_geom]}

    def label(g):
        lab = np.full(g.shape, -1)
        for k, ids in enumerate(classes.values()):
            lab[np.isin(g, ids)] = k
        return lab

    def interior(lab):  # pixels whose 3×3 neighbourhood has one class
        p = np.pad(lab, 1, constant_values=-2)
        return np.all([p[1 + i:p.shape[0] - 1 + i, 1 + j:p.shape[1] - 1 + j] == lab
                       for i in (-1, 0, 1) for j in (-1, 0, 1)], axis=0)

    size, s = 32, 2
    seen = 0
    for v, mj_rgb, mj_seg in zip(MUJOCO_VIEWS, ref["rgb"], ref["seg"]):
        d = _data(world, **v["objects"])
        az, el = np.deg2rad(v["azimuth"]), np.deg2rad(v["elevation"])
        fwd = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        lookat = np.asarray(v["lookat"])
        eye = lookat - v["distance"] * fwd
        dirs, step_x, step_y, axis = lookat_rays(jnp.asarray(eye), jnp.asarray(lookat), float(ref["fovy"]), size,
                                                 s, differentials=True)
        n = size * size * s * s
        dirs = np.asarray(dirs).reshape(-1, 3)
        per_ray = lambda x: np.broadcast_to(np.asarray(x), (PAD_FP, 3))
        rgb = np.zeros((n, 3))
        geom = np.zeros(n, int)
        for k in range(0, n, PAD_FP):
            sl = slice(k, k + PAD_FP)
            rgb[sl], _, geom[sl] = _cast_fp(scene, d, per_ray(eye), dirs[sl], per_ray(step_x), per_ray(step_y),
                                            per_ray(axis))
        ours = rgb.reshape(size, size, s * s, 3).mean(2)
        lab_ours, lab_mj = label(geom.reshape(size, size, s * s)[..., 0]), label(mj_seg)
        assert np.mean(lab_ours == lab_mj) > 0.95
        both = interior(lab_ours) & interior(lab_mj) & (lab_ours == lab_mj)
        mj = mj_rgb.astype(np.float64) / 255
        for k, name in enumerate(classes):
            sel = both & (lab_ours == k)
            if sel.sum() < 8:
                continue
            seen += 1
            a, b = ours[sel].mean(0), mj[sel].mean(0)
            assert np.all(np.abs(a - b) <= 0.1 * b + 0.005), (name, v, a, b)
            if name in ("goal", "adversary"):  # material only: red and blue, no green (which of
                assert b[1] < 0.05 and b[0] + b[2] > 0.8, (name, b)  # the two leads: the stripes in view)
    assert seen >= 8
