"""Ray caster: agreement with native mj_ray, stripe orientation, hidden groups, jit/vmap, lights."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from omegaconf import OmegaConf

import aci_jax.config as C
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


def _sphere_image(world, name, n=9):
    """An n×n ray grid at an object sphere 2 m away along +y (rows: z, columns: x)."""
    o = world.objects[name]
    d = _data(world, **{name: [0.0, 0.0, o.radius]})
    s = np.linspace(-0.3, 0.3, n) * o.radius
    zz, xx = np.meshgrid(s, s, indexing="ij")
    target = np.stack([xx, np.zeros_like(xx), zz + o.radius], -1).reshape(-1, 3)
    eye = np.array([0.0, -2.0, o.radius])
    v = (target - eye) / np.linalg.norm(target - eye, axis=-1, keepdims=True)
    rgb, _, geom = _cast(make_render_scene(world), d, np.broadcast_to(eye, v.shape), v)
    assert np.all(np.asarray(geom) == o.geom)
    return np.asarray(rgb).reshape(n, n, 3)


def test_stripe_orientation(worlds):
    """Upright goal: vertical stripes (colour changes across columns); turned adversary: rows."""
    var = lambda img, ax: np.abs(np.diff(img, axis=ax)).sum()
    goal = _sphere_image(worlds["OPEN"], "goal")
    adv = _sphere_image(worlds["OPEN"], "adversary")
    assert var(goal, 1) > 5 * var(goal, 0)
    assert var(adv, 0) > 5 * var(adv, 1)


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
