"""PPO: padding contributes nothing, a vmapped population equals its solo runs, and it learns."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aci_jax
from aci_jax.eyes.geometry import EyeBuffer, EyeParams
from aci_jax.rl import PPO, ActorCritic, NetworkConfig
from aci_jax.rl.networks import init_obs_stats, update_obs_stats
from aci_jax.rl.evaluation import make_evaluate, summarize

# Detection with a 4x4 eye in a buffer of 2 eyes of up to 4x4 pixels; short episodes, small batches,
# ACI's 10 epochs and goal reward (the setup the learning test below was sized with).
# ACI's absolute heading: its dynamics amplify float rounding less, so vmapped and solo training
# stay close for an iteration (turning relative to the heading integrates ~1e-7 differences of XLA's
# fused and unfused arithmetic in vmapped vs single code, and contacts then amplify them).
OVERRIDES = ["env.agents.agent.heading=absolute", "env.agents.agent.eyes.resolution=[4,4]", "env.render.max_resolution=4", "env.render.max_eyes=2",
             "env.render.supersample=1", "env.max_episode_steps=64", "env.frame_stack=4", "env.n_envs=16",
             "trainer.n_steps=64", "trainer.n_minibatches=8", "trainer.n_epochs=10",
             "env.task.rewards.goal.reward=1.0"]
LEARN_ITERATIONS = 40  # x 1024 env steps


@pytest.fixture(scope="module")
def ppo():
    cfg = aci_jax.load_config("detection", OVERRIDES)
    return PPO(aci_jax.make_env(cfg), cfg.trainer)


def _shrink_rows(kernel, block_shape, index):
    """Keep the rows `index` of the leading block (laid out as `block_shape`) of a Dense kernel."""
    n = math.prod(block_shape)
    block = kernel[:n].reshape(*block_shape, -1)[index]
    return jnp.concatenate([block.reshape(-1, kernel.shape[-1]), kernel[n:]])


@pytest.mark.parametrize("encoder", ["mlp", "cnn", "flatten"])
@pytest.mark.parametrize("r, R", [(2, 4), (1, 32)])
def test_padded_pixels_and_eyes_contribute_nothing(encoder, r, R):
    """An rxr eye in a buffer of 4 eyes of RxR (garbage in the padding) == that eye in a 1-eye rxr buffer."""
    stack, feat = 3, 8
    net_cfg = NetworkConfig(encoder=encoder, features=feat, channels=(4, 5), hidden=(16, 16))
    eyes = EyeParams(num_eyes=jnp.array([1, 1]), resolution=jnp.array([r, r]), fov=jnp.array([45.0, 45.0]),
                     lat_range=jnp.zeros(2), lon_range=jnp.zeros(2))
    big, small = EyeBuffer(4, R, 1), EyeBuffer(1, r, 1)
    net_big = ActorCritic(tuple(big.names((1, 1))), big, net_cfg)
    net_small = ActorCritic(tuple(small.names((1, 1))), small, net_cfg)
    ks = jax.random.split(jax.random.PRNGKey(0), 7)
    batch = (5,)
    obs_big = {n: jax.random.uniform(k, (*batch, stack, R, R, 3)) for n, k in zip(net_big.eye_names, ks)}
    obs_big.update(action=jax.random.uniform(ks[5], (*batch, stack, 2)),
                   contact=jax.random.bernoulli(ks[6], 0.5, (*batch, stack, 1)).astype(jnp.float32))
    obs_small = {"eye_0_0": obs_big["eye_0"][..., :r, :r, :], "action": obs_big["action"],
                 "contact": obs_big["contact"]}
    params = net_big.init(jax.random.PRNGKey(1), obs_big, eyes)
    leaves, tree = jax.tree.flatten(params)  # random weights and biases, as after training
    params = tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in
                             zip(jax.random.split(jax.random.PRNGKey(2), len(leaves)), leaves)])
    p = jax.tree.map(lambda x: x, params["params"])  # a copy to edit
    if encoder == "flatten":
        eye_block, eye_index = (4, stack, R, R, 3), np.s_[:1, :, :r, :r, :]
    else:
        eye_block, eye_index = (4, feat), np.s_[:1]
        enc = p["encoder"]["Dense_0"]
        enc["kernel"] = (_shrink_rows(enc["kernel"], (stack, R, R, 3), np.s_[:, :r, :r, :]) if encoder == "mlp"
                         else _shrink_rows(enc["kernel"], (R, R, 5), np.s_[:r, :r, :]))
    for head in ("pi_0", "v_0"):
        p[head]["kernel"] = _shrink_rows(p[head]["kernel"], eye_block, eye_index)
    out_big = net_big.apply(params, obs_big, eyes)
    out_small = net_small.apply({"params": p}, obs_small, eyes)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out_big, out_small)
    assert float(jnp.abs(out_big[2]).max()) > 0


def test_unshared_encoder_feeds_only_the_value():
    """`share_encoder=False`: the policy reads `encoder`, the value reads `v_encoder`, nothing else."""
    buf = EyeBuffer(2, 4, 1)
    net = ActorCritic(tuple(buf.names((1, 2))), buf, NetworkConfig(features=8, hidden=(16,), share_encoder=False))
    eyes = EyeParams(num_eyes=jnp.array([1, 2]), resolution=jnp.array([4, 4]), fov=jnp.array([45.0, 45.0]),
                     lat_range=jnp.zeros(2), lon_range=jnp.array([-30.0, 30.0]))
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    obs = {n: jax.random.uniform(k, (5, 2, 4, 4, 3)) for n, k in zip(net.eye_names, ks)}
    obs.update(action=jax.random.uniform(ks[2], (5, 2, 2)), contact=jnp.zeros((5, 2, 1)))
    params = net.init(ks[3], obs, eyes)
    base = net.apply(params, obs, eyes)  # (mean, log_std, value)
    for name, kept, moved in (("encoder", 2, 0), ("v_encoder", 0, 2)):
        p = jax.tree.map(lambda x: x, params)
        p["params"][name]["Dense_0"]["kernel"] = 2.0 * p["params"][name]["Dense_0"]["kernel"]
        out = net.apply(p, obs, eyes)
        np.testing.assert_array_equal(out[kept], base[kept])
        assert not np.allclose(out[moved], base[moved])


def test_observation_statistics_and_normalised_training(ppo):
    """Running statistics over batches equal those of all samples at once; never-varying (padded)
    pixels normalise to 0; PPO updates the statistics from each rollout, not by gradients."""
    ks = jax.random.split(jax.random.PRNGKey(0), 2)
    batches = [{"eye": jax.random.uniform(k, (7, 3, 2)) * jnp.array([1.0, 0.0]), "action": jax.random.normal(k, (7, 2))}
               for k in ks]
    stats = init_obs_stats(jax.tree.map(lambda x: x[0], batches[0]))
    for b in batches:
        stats = update_obs_stats(stats, b)
    both = jax.tree.map(lambda *x: np.concatenate(x), *batches)
    assert float(stats["count"]) == 14
    jax.tree.map(lambda m, x: np.testing.assert_allclose(m, x.mean(0), rtol=1e-5, atol=1e-6), stats["mean"], both)
    jax.tree.map(lambda s, x: np.testing.assert_allclose(s, np.maximum(x.std(0), 1e-6), rtol=1e-5), stats["std"], both)
    assert np.all((both["eye"][..., 1] - stats["mean"]["eye"][..., 1]) / stats["std"]["eye"][..., 1] == 0)

    norm = PPO(ppo.env, dataclasses.replace(ppo.cfg, network=dataclasses.replace(ppo.cfg.network, normalize_observations=True)))
    ts = norm.jit_init(jax.random.PRNGKey(3))
    assert float(ts.params["obs_norm"]["stats"]["count"]) == 0
    assert jax.tree.structure(ts.opt_state) == jax.tree.structure(ppo.jit_init(jax.random.PRNGKey(3)).opt_state)
    new, m = norm.jit_iteration(ts)
    stats = new.params["obs_norm"]["stats"]
    assert float(stats["count"]) == norm.batch_size and np.isfinite(float(m["policy_loss"]))
    eye = stats["mean"]["eye_0"]  # 4x4 eye in a buffer of up to 4x4: every pixel sees something
    assert float(eye.max()) > 0 and float(stats["std"]["eye_0"].min()) > 1e-6
    assert float(stats["mean"]["eye_1"].max()) == 0  # the empty second eye slot
    assert not np.allclose(new.params["params"]["pi_0"]["kernel"], ts.params["params"]["pi_0"]["kernel"])
    obs = new.env_state.obs
    shifted = {**new.params, "obs_norm": {"stats": {**stats, "mean": jax.tree.map(lambda x: x + 0.5, stats["mean"])}}}
    assert not np.allclose(norm.network.apply(shifted, obs, new.eyes)[0], norm.network.apply(new.params, obs, new.eyes)[0])


# CI-sized learning setup: the small ARENA (5x5 cells), the agent starting on its south row facing
# north, the goal alone on the north row 6 m away; 4x4 eye, 16 envs, 128-step episodes (an untrained
# policy's half speed, 0.5 m/s, still reaches the goal in time). ACI's absolute heading (OVERRIDES): with
# exp=detection's relative heading the untrained policy (a1 ≈ 0) would drive straight at the goal.
ARENA = [*(o for o in OVERRIDES if not o.startswith("env.max_episode_steps")), "env.max_episode_steps=128",
         "~maze@env.mazes.OPEN", "~env.mazes.OPEN", "+maze@env.mazes.ARENA=ARENA",
         "env.mazes.ARENA.agent_id_map.default=[agent]", "+env.mazes.ARENA.agent_id_map.O=[goal]",
         "env.agents.agent.init_yaw=90", "~env.agents.adversary", "~env.task.truncations.adversary",
         "~eval_env.task.rewards.adversary", "eval_env.task.step_fns.respawn.targets=[goal]"]


def test_learns_to_find_the_goal_and_deterministic_policy():
    # Over 60 s (~80 s): learning needs LEARN_ITERATIONS real PPO iterations; it is the suite's one
    # check that PPO learns at all.
    """Seeded: after LEARN_ITERATIONS the deterministic policy's evaluation success rate (64 episodes
    on the eval variant) is far above the untrained policy's."""
    cfg = aci_jax.load_config("detection", ARENA)
    ppo = PPO(aci_jax.make_env(cfg), cfg.trainer)
    evaluate = jax.jit(make_evaluate(ppo, aci_jax.make_env(cfg, eval=True), 64))
    success = lambda ts: summarize(evaluate(ts.params, ts.eyes, jax.random.PRNGKey(1)))["success_rate"]
    ts = ppo.jit_init(jax.random.PRNGKey(0))
    before = success(ts)
    for _ in range(LEARN_ITERATIONS):
        ts, m = ppo.jit_iteration(ts)
    after = success(ts)
    print(f"evaluation success rate: untrained {before:.2f}, trained {after:.2f} ({int(ts.env_steps)} env steps)")
    assert int(ts.env_steps) == LEARN_ITERATIONS * ppo.batch_size
    assert after >= before + 0.25

    # The deterministic policy (the one evaluations use) is the stochastic policy's median action:
    # clipping to [-1, 1] is monotone, so it keeps the Gaussian's median, its mean. 4,000 samples per
    # env and action: the sample median's standard error is 1.25·σ/√4000 (≈ 0.02σ); allowed 4× that.
    obs = ts.env_state.obs
    act = ppo.make_policy(ts.params, ts.eyes)
    noisy = ppo.make_policy(ts.params, ts.eyes, deterministic=False)
    samples = jax.jit(jax.vmap(lambda k: noisy(obs, k)))(jax.random.split(jax.random.PRNGKey(0), 4000))
    assert samples.shape == (4000, ppo.n_envs, 2) and float(samples.std(0).max()) > 0.05  # really stochastic
    (log_std,) = [x for path, x in jax.tree_util.tree_flatten_with_path(ts.params)[0] if "log_std" in str(path)]
    sigma = float(jnp.exp(log_std).max())
    np.testing.assert_allclose(np.median(np.asarray(samples), 0), act(obs), atol=4 * 1.25 * sigma / np.sqrt(4000))
    np.testing.assert_array_equal(act(obs), act(obs))  # no key, no noise: the same action every call
