"""Packed pixel layout (`env.render.max_pixels`) and the frame-stack / policy-width genes.

The packed layout must see, and the networks must compute, exactly what the buffer layout does for
the same eyes and parameters, only at a cost that follows the individual's real pixels.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aci_jax
from aci_jax.eyes.geometry import EyeBuffer, EyeParams, eye_rays, packed_rays, packed_slots, unpack
from aci_jax.rl import PPO, ActorCritic, NetworkConfig
from aci_jax.rl.networks import newest_frames


def params(num=(1, 1), res=(1, 1), fov=(45.0, 30.0), lat=(0.0, 0.0), lon=(0.0, 0.0), **genes):
    return EyeParams(jnp.array(num), jnp.array(res), jnp.array(fov, jnp.float32),
                     jnp.array(lat, jnp.float32), jnp.array(lon, jnp.float32), **genes)


# ACI's kinds of eyes within one static buffer of 4 eyes up to 10x10 (or 36 packed pixels).
EYES = {
    "1x1 eye": params(),
    "1x3 flatland 10x1": params(num=(1, 3), res=(10, 1), fov=(60.0, 10.0), lon=(-60.0, 60.0)),
    "2x2 eyes of 3x3": params(num=(2, 2), res=(3, 3), fov=(40.0, 40.0), lat=(-15.0, 15.0), lon=(-45.0, 45.0)),
}


# -- geometry --------------------------------------------------------------------------------------

def test_slot_layout_and_validity():
    eye, row, col, ok = packed_slots(params(num=(1, 2), res=(3, 2)), EyeBuffer(2, 3, 1, max_pixels=14))
    assert ok.tolist() == [True] * 12 + [False] * 2
    assert eye[:12].tolist() == [0] * 6 + [1] * 6
    assert row[:6].tolist() == [0, 0, 0, 1, 1, 1] and col[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert int(eye.max()) <= 1 and int(row.max()) <= 1 and int(col.max()) <= 2  # clamped in range


@pytest.mark.parametrize("name", list(EYES))
def test_packed_rays_are_the_buffer_rays_of_each_pixel_and_unpack_inverts(name):
    p = EYES[name]
    buf = EyeBuffer(4, 10, 2, max_pixels=36)
    pos, yaw = jnp.array([1.0, -2.0, 0.2]), jnp.float32(0.4)
    o, d = jax.jit(lambda p: packed_rays(p, buf, pos, yaw, 0.2))(p)
    ob, db = jax.jit(lambda p: eye_rays(p, buf, pos, yaw, 0.2))(p)
    eye, row, col, ok = packed_slots(p, buf)
    assert d.shape == (36, 4, 3) and o.shape == (36, 3)
    n = int(ok.sum())
    assert n == int(p.num_eyes.prod() * p.resolution.prod())
    np.testing.assert_allclose(d[:n], db[eye, row, col][:n], atol=1e-7)
    np.testing.assert_array_equal(o[:n], ob[eye[:n]])
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, 36, 3)) * ok[:, None]
    img = unpack(x, p, buf)
    assert img.shape == (5, 4, 10, 10, 3)
    np.testing.assert_array_equal(img[:, eye[:n], row[:n], col[:n]], x[:, :n])
    np.testing.assert_allclose(float(img.sum()), float(x.sum()), rtol=1e-6)  # nothing else is non-zero


def test_rectangular_maxima():
    buf = EyeBuffer(3, 10, 1, max_width=10, max_height=1)
    o, d = eye_rays(EYES["1x3 flatland 10x1"], buf, jnp.zeros(3), jnp.float32(0.0), 0.2)
    assert d.shape == (3, 1, 10, 1, 3)
    _, square = eye_rays(EYES["1x3 flatland 10x1"], EyeBuffer(3, 10, 1), jnp.zeros(3), jnp.float32(0.0), 0.2)
    np.testing.assert_array_equal(d, square[:, :1])


# -- config ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    (["env.render.max_pixels=99"], r"100 pixels, more than render.max_pixels=99"),
    (["env.render.max_pixels=0"], r"render.max_pixels=0 must be a positive int"),
    (["env.render.max_width=8"], r"render.max_width=8; valid: width <= 8"),
    (["env.agents.agent.eyes.resolution=[12,1]", "env.render.max_height=1", "env.render.max_width=10"],
     r"render.max_width=10"),
    (["+env.agents.agent.eyes.frame_stack=11", "env.frame_stack=10"], r"frame_stack=11 .* <= env.frame_stack=10"),
    (["+env.agents.agent.eyes.policy_width=0"], r"policy_width=0 must be null or an integer >= 1"),
])
def test_bad_packed_config_values(overrides, match):
    with pytest.raises(aci_jax.ConfigError, match=match):
        aci_jax.load_config("detection", overrides)


def test_genes_from_config():
    cfg = aci_jax.load_config("detection")
    e = EyeParams.from_config(cfg.env.agents.agent.eyes)
    assert e.frame_stack is None and e.policy_width is None  # absent: off, no leaves
    assert len(jax.tree.leaves(e)) == 5
    cfg = aci_jax.load_config("detection", ["+env.agents.agent.eyes.frame_stack=3",
                                            "+env.agents.agent.eyes.policy_width=16", "env.frame_stack=10"])
    e = EyeParams.from_config(cfg.env.agents.agent.eyes)
    assert int(e.frame_stack) == 3 and int(e.policy_width) == 16


# -- env -------------------------------------------------------------------------------------------

ENV = ["env.agents.agent.eyes.num_eyes=[2,2]", "env.agents.agent.eyes.resolution=[3,3]",
       "env.render.max_eyes=4", "env.render.max_resolution=10", "env.frame_stack=2",
       "env.max_episode_steps=4", "env.agents.agent.heading=absolute"]


@pytest.fixture(scope="module")
def envs():
    buffered = aci_jax.make_env(aci_jax.load_config("detection", ENV))
    packed = aci_jax.make_env(aci_jax.load_config("detection", [*ENV, "env.render.max_pixels=36"]))
    return buffered, packed


def _gathered(obs, eyes, env):
    """The buffer layout's eye images at the packed slots (zeros in unused slots): (..., P, 3)."""
    images = jnp.stack([obs[n] for n in env.eye_names], -4)  # (..., E, H, W, 3)
    eye, row, col, ok = packed_slots(eyes, EyeBuffer(4, 10, 2, max_pixels=36))
    return images[..., eye, row, col, :] * ok[:, None]


def test_packed_observation_equals_buffer_pixels(envs):
    buffered, packed = envs
    assert packed.observation_size == {"pixels": (2, 36, 3), "action": (2, 2), "contact": (2, 1)}
    assert packed.image_keys == ("pixels",) and buffered.image_keys == tuple(buffered.eye_names)
    key = jax.random.PRNGKey(3)
    reset_b, reset_p = jax.jit(buffered.reset), jax.jit(packed.reset)
    render_b, render_p = jax.jit(buffered.render_eyes), jax.jit(packed.render_eyes)
    for name, eyes in EYES.items():
        sb, sp = reset_b(key, eyes), reset_p(key, eyes)
        assert set(sp.obs) == {"pixels", "action", "contact"} and sp.obs["pixels"].shape == (2, 36, 3)
        want = _gathered(sb.obs, eyes, buffered)
        np.testing.assert_allclose(sp.obs["pixels"], want, atol=1e-5, err_msg=name)
        assert float(want[-1].max()) > 0 and float(jnp.abs(sp.obs["pixels"][0]).max()) == 0  # padded stack
        # Display images: the same pictures in both layouts.
        ib, _, gb = render_b(sb.pipeline_state, eyes, sb.info["episode"].wall_material)
        ip, _, gp = render_p(sp.pipeline_state, eyes, sp.info["episode"].wall_material)
        assert ip.shape == ib.shape == (4, 10, 10, 3)
        np.testing.assert_allclose(ip, ib, atol=1e-5, err_msg=name)
        m = np.asarray(ip.sum(-1) > 0) | np.asarray(ib.sum(-1) > 0)
        np.testing.assert_array_equal(np.asarray(gp)[m], np.asarray(gb)[m])


def test_vmapped_individuals_step_like_solo_buffer_runs(envs):
    """Two individuals with different eyes in one vmapped packed step == each one's buffer run."""
    buffered, packed = envs
    eyes = [EYES["1x3 flatland 10x1"], EYES["2x2 eyes of 3x3"]]
    pop = jax.tree.map(lambda *x: jnp.stack(x), *eyes)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    action = jnp.array([[1.0, 0.3], [0.5, -0.5]])
    sp = jax.jit(jax.vmap(packed.reset))(keys, pop)
    sp = jax.jit(jax.vmap(packed.step))(sp, action)
    step_b = jax.jit(buffered.step)
    for i, e in enumerate(eyes):
        sb = step_b(jax.jit(buffered.reset)(keys[i], e), action[i])
        np.testing.assert_allclose(sp.obs["pixels"][i], _gathered(sb.obs, e, buffered), atol=1e-5)
        np.testing.assert_allclose(sp.pipeline_state.qpos[i], sb.pipeline_state.qpos, atol=1e-6)
        np.testing.assert_array_equal(sp.obs["action"][i], sb.obs["action"])
    assert float(jnp.abs(sp.obs["pixels"][:, 0]).max()) > 0  # both frames filled after a step


# -- networks --------------------------------------------------------------------------------------

def _random_params(variables, key):
    leaves, tree = jax.tree.flatten(variables)  # random weights and biases, as after training
    return tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in
                           zip(jax.random.split(key, len(leaves)), leaves)])


@pytest.mark.parametrize("encoder", ["mlp", "flatten", "cnn"])
@pytest.mark.parametrize("maxima", [(10, None, None), (10, 10, 1)])
def test_packed_network_equals_buffer_network(encoder, maxima):
    """Same parameters (same shapes, names and init) → same outputs, for several individuals at once."""
    max_res, max_width, max_height = maxima
    cfg = NetworkConfig(encoder=encoder, features=8, channels=(4,), hidden=(16, 16), share_encoder=False)
    bb = EyeBuffer(4, max_res, 1, max_width=max_width, max_height=max_height)
    pb = dataclasses.replace(bb, max_pixels=36)
    net_b, net_p = ActorCritic(tuple(bb.names()), bb, cfg), ActorCritic(("pixels",), pb, cfg)
    eyes = [EYES["1x1 eye"], EYES["1x3 flatland 10x1"]] + ([EYES["2x2 eyes of 3x3"]] if max_height is None else [])
    stack, batch = 3, 5
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    extra = {"action": jax.random.uniform(ks[1], (batch, stack, 2)), "contact": jnp.ones((batch, stack, 1))}
    obs_p, obs_b = [], []
    for i, e in enumerate(eyes):
        ok = packed_slots(e, pb)[3]
        pixels = jax.random.uniform(jax.random.fold_in(ks[0], i), (batch, stack, 36, 3)) * ok[:, None]
        images = unpack(pixels, e, pb)  # (batch, stack, E, H, W, 3)
        # garbage in the buffer's padding: masks must remove it
        images = images + (images == 0) * jax.random.uniform(ks[2], images.shape)
        obs_p.append({"pixels": pixels, **extra})
        obs_b.append({n: images[:, :, k] for k, n in enumerate(net_b.eye_names)} | extra)
    init_b = net_b.init(ks[3], jax.tree.map(lambda x: x[0], obs_b[0]), eyes[0])
    init_p = net_p.init(ks[3], jax.tree.map(lambda x: x[0], obs_p[0]), eyes[0])
    jax.tree.map(np.testing.assert_array_equal, init_p, init_b)  # same names, shapes and values
    variables = _random_params(init_b, ks[3])
    stacked = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)
    apply = lambda net: jax.jit(jax.vmap(lambda o, e: net.apply(variables, o, e)))
    out_b = apply(net_b)(stacked(obs_b), stacked(eyes))
    out_p = apply(net_p)(stacked(obs_p), stacked(eyes))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), out_p, out_b)
    assert float(jnp.abs(out_b[2]).max()) > 0.1
    for i, e in enumerate(eyes):  # and each individual alone
        solo = net_p.apply(variables, obs_p[i], e)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-5), solo, out_p)


@pytest.mark.parametrize("packed", [False, True])
def test_policy_width_gene_equals_a_narrower_network(packed):
    wide, w = (16, 16), 5
    buf = EyeBuffer(2, 4, 1, max_pixels=32 if packed else None)
    names = ("pixels",) if packed else tuple(buf.names())
    cfg = NetworkConfig(encoder="mlp", features=8, hidden=wide)
    e = params(num=(1, 2), res=(4, 4), lon=(-30.0, 30.0))
    ks = jax.random.split(jax.random.PRNGKey(1), 3)
    shape = (6, 2, 32, 3) if packed else (6, 2, 4, 4, 3)
    obs = {n: jax.random.uniform(jax.random.fold_in(ks[0], i), shape) for i, n in enumerate(names)}
    obs.update(action=jax.random.uniform(ks[1], (6, 2, 2)), contact=jnp.ones((6, 2, 1)))
    net = ActorCritic(names, buf, cfg)
    variables = _random_params(net.init(ks[2], obs, e), ks[2])
    gened = net.apply(variables, obs, e.replace(policy_width=jnp.int32(w)))
    narrow = ActorCritic(names, buf, dataclasses.replace(cfg, hidden=(w, w)))
    p = jax.tree.map(lambda x: x, variables["params"])
    for head in ("pi", "v"):
        p[f"{head}_0"] = {"kernel": p[f"{head}_0"]["kernel"][:, :w], "bias": p[f"{head}_0"]["bias"][:w]}
        p[f"{head}_1"] = {"kernel": p[f"{head}_1"]["kernel"][:w, :w], "bias": p[f"{head}_1"]["bias"][:w]}
        p[f"{head}_out"] = {"kernel": p[f"{head}_out"]["kernel"][:w], "bias": p[f"{head}_out"]["bias"]}
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), gened,
                 narrow.apply({"params": p}, obs, e))
    assert not np.allclose(gened[0], net.apply(variables, obs, e)[0])


def test_frame_stack_gene_zeroes_older_frames():
    buf = EyeBuffer(1, 2, 1, max_pixels=4)
    e = params(res=(2, 2))
    obs = {"pixels": jnp.ones((7, 4, 4, 3)), "action": jnp.ones((7, 4, 2)), "contact": jnp.ones((7, 4, 1)),
           "eye_0": jnp.ones((7, 4, 2, 2, 3))}
    kept = newest_frames(obs, jnp.int32(3))
    for k, x in kept.items():
        assert float(jnp.moveaxis(x, 1, 0)[0].max()) == 0 and float(jnp.moveaxis(x, 1, 0)[1:].min()) == 1, k
    net = ActorCritic(("pixels",), buf, NetworkConfig(features=4, hidden=(8,)))
    obs = {k: jax.random.uniform(jax.random.PRNGKey(i), v.shape)
           for i, (k, v) in enumerate(obs.items()) if k != "eye_0"}
    variables = net.init(jax.random.PRNGKey(0), obs, e)
    old_zeroed = {k: v.at[:, :2].set(0.0) for k, v in obs.items()}
    two = e.replace(frame_stack=jnp.int32(2))
    np.testing.assert_array_equal(net.apply(variables, obs, two)[0], net.apply(variables, old_zeroed, e)[0])
    assert not np.allclose(net.apply(variables, obs, two)[0], net.apply(variables, obs, e)[0])


# -- PPO over a population with different genes ----------------------------------------------------

# tests/test_train.py's TINY sizes, with the packed layout and ACI's absolute heading (vmapped and
# solo runs then agree to float rounding, see tests/test_ppo.py).
TINY = ["env.agents.agent.eyes.resolution=[2,2]", "env.render.supersample=1", "env.n_envs=4",
        "env.max_episode_steps=16", "env.frame_stack=2", "trainer.n_steps=8", "trainer.n_minibatches=2",
        "trainer.n_epochs=1", "env.render.max_eyes=2", "env.render.max_resolution=4",
        "env.render.max_pixels=8", "env.agents.agent.heading=absolute", "trainer.network.hidden=[16,16]",
        "trainer.network.features=8"]


def test_population_with_different_genes_vmaps_like_solo_runs():
    # Over 60 s (~90 s): a vmapped PPO iteration and one solo iteration per eye layout compile here.
    cfg = aci_jax.load_config("detection", TINY)
    ppo = PPO(aci_jax.make_env(cfg), cfg.trainer)
    base = ppo.env.default_eyes
    eyes = [base.replace(resolution=jnp.array([4, 2]), frame_stack=jnp.int32(1), policy_width=jnp.int32(4)),
            base.replace(num_eyes=jnp.array([1, 2]), resolution=jnp.array([2, 2]), lon_range=jnp.array([-30.0, 30.0]),
                         frame_stack=jnp.int32(2), policy_width=jnp.int32(16))]
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    pop = jax.tree.map(lambda *x: jnp.stack(x), *eyes)
    ts = jax.jit(jax.vmap(ppo.init))(keys, pop)
    ts, metrics = jax.jit(jax.vmap(ppo.iteration))(ts)
    assert ts.env_state.obs["pixels"].shape == (2, 4, 2, 8, 3)
    for i in range(2):
        solo, m = ppo.jit_iteration(ppo.jit_init(keys[i], eyes[i]))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5), ts.params, solo.params)
        np.testing.assert_allclose(metrics["policy_loss"][i], m["policy_loss"], rtol=1e-4, atol=1e-5)
    # the narrow policy's masked hidden units get no gradient: their outgoing weights keep their init
    init = jax.jit(jax.vmap(ppo.init))(keys, pop)
    k0, k1 = (s.params["params"]["pi_1"]["kernel"][0] for s in (init, ts))
    np.testing.assert_array_equal(k0[4:], k1[4:])
    assert not np.allclose(k0[:4], k1[:4])
