"""Can the detection eye tell the goal from the adversary, and how well could a policy do? Two bounds.

Probe: renders single eye frames of one object (goal or adversary, 50/50) seen from 1–5 m in a random
direction, the agent facing it (±0.2 rad), and fits a 3-layer tanh MLP classifier (the size of the
policy's layers) on 10,000 frames; reports held-out accuracy overall, by distance and by viewing
direction relative to the adversary's pole axis (x). This bounds what any policy could learn from
one frame, separating "the eye cannot see it" from "RL does not learn it".

Oracle: a memoryless scripted policy on the evaluation env that sees objects only inside the eye's
horizontal fov and tells goal from adversary perfectly, but only within D m (privileged positions
stand in for vision). It heads for the goal when it is known, else for the nearest visible object
that is not a known adversary, else turns in place. Its eval success rate at a given D is what a
reactive policy that discriminates at D m could reach (the steering of `exp=detection` included).

    python benchmarks/detection_probe.py [exp overrides, e.g. env.agents.agent.eyes.resolution=[1,1]]

Prints two tables and writes benchmarks/detection_probe.json (probe: one entry per eye resolution;
oracle: one entry per D).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from mujoco import mjx

import aci_jax

N_TRAIN, N_TEST, EPOCHS, BATCH = 10_000, 2_000, 60, 128
DISTANCES = ((1, 2), (2, 3), (3, 4), (4, 5))
AXIS_BINS = ((0.0, 0.38), (0.38, 0.71), (0.71, 0.92), (0.92, 1.01))  # |cos| of the angle to the x axis


def make_sampler(env):
    """`sample(key) -> (image, is_goal, distance, azimuth)`: one object in view, the other far away."""
    state = env.reset(jax.random.PRNGKey(0))
    goal, adversary = env.world.objects["goal"], env.world.objects["adversary"]

    def sample(key):
        k_obj, k_dist, k_az, k_yaw = jax.random.split(key, 4)
        is_goal = jax.random.bernoulli(k_obj)
        dist = jax.random.uniform(k_dist, minval=1.0, maxval=5.0)
        az = jax.random.uniform(k_az, minval=-jnp.pi, maxval=jnp.pi)
        yaw = az + jax.random.uniform(k_yaw, minval=-0.2, maxval=0.2)
        data = state.pipeline_state
        qpos = data.qpos.at[env.agent.qpos_adr].set(jnp.stack([-dist * jnp.cos(az), -dist * jnp.sin(az), yaw]))
        here, away = jnp.array([0.0, 0.0, goal.radius]), jnp.array([50.0, 50.0, -10.0])
        mocap = data.mocap_pos.at[goal.mocap].set(jnp.where(is_goal, here, away))
        mocap = mocap.at[adversary.mocap].set(jnp.where(is_goal, away, here))
        images, _, _ = env.render_eyes(mjx.kinematics(env.mx, data.replace(qpos=qpos, mocap_pos=mocap)),
                                       env.default_eyes, state.info["episode"].wall_material)
        return images[0], is_goal, dist, az

    return jax.jit(jax.vmap(sample))


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, x):
        for width in (64, 64, 64):
            x = nn.tanh(nn.Dense(width)(x))
        return nn.Dense(1)(x)[..., 0]


def probe(overrides: list[str]) -> dict:
    env = aci_jax.make_env(aci_jax.load_config("detection", overrides))
    sample = make_sampler(env)
    keys = jax.random.split(jax.random.PRNGKey(1), N_TRAIN + N_TEST)
    parts = [sample(keys[i:i + 1000]) for i in range(0, len(keys), 1000)]
    x, y, dist, az = (np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(4))
    x, y = x.reshape(len(x), -1), y.astype(np.float32)

    model, opt = Classifier(), optax.adam(1e-3)
    params = model.init(jax.random.PRNGKey(0), x[:1])
    opt_state = opt.init(params)

    @jax.jit
    def update(params, opt_state, xb, yb):
        loss = lambda p: optax.sigmoid_binary_cross_entropy(model.apply(p, xb), yb).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    for _ in range(EPOCHS):
        perm = rng.permutation(N_TRAIN)
        for b in range(0, N_TRAIN, BATCH):
            params, opt_state = update(params, opt_state, x[perm[b:b + BATCH]], y[perm[b:b + BATCH]])
    correct = (np.asarray(model.apply(params, x[N_TRAIN:])) > 0) == (y[N_TRAIN:] > 0.5)
    d, axis = dist[N_TRAIN:], np.abs(np.cos(az[N_TRAIN:]))
    return {"overrides": overrides, "resolution": list(env.eyes_cfg.resolution), "test_frames": N_TEST,
            "accuracy": float(correct.mean()),
            "by_distance_m": {f"{lo}-{hi}": float(correct[(d >= lo) & (d < hi)].mean()) for lo, hi in DISTANCES},
            "by_abs_cos_to_pole_axis": {f"{lo}-{hi}": float(correct[(axis >= lo) & (axis < hi)].mean())
                                        for lo, hi in AXIS_BINS}}


def oracle(overrides: list[str], reach_m: float, episodes: int = 128) -> dict:
    """Eval success / failure rates of the oracle policy that discriminates within `reach_m` m."""
    env = aci_jax.make_env(aci_jax.load_config("detection", overrides), eval=True)
    half_fov = np.deg2rad(env.eyes_cfg.fov[0]) / 2
    goal = env.object_names.index("goal")

    def act(data):
        pos, yaw = data.qpos[env.agent.qpos_adr[:2]], data.qpos[env.agent.qpos_adr[2]]
        rel = env.object_xy(data) - pos
        dist, heading = jnp.linalg.norm(rel, axis=-1), jnp.arctan2(rel[:, 1], rel[:, 0])
        visible = jnp.abs(jnp.angle(jnp.exp(1j * (heading - yaw)))) < half_fov
        known = visible & (dist < reach_m)
        is_goal = jnp.arange(len(dist)) == goal
        score = jnp.where(visible & ~(known & ~is_goal), dist, jnp.inf)
        score = jnp.where(known & is_goal, -1.0, score)
        target = jnp.argmin(score)
        seen = jnp.isfinite(score[target])
        return jnp.stack([jnp.where(seen, 1.0, -1.0), jnp.where(seen, env.steer(data, heading[target]), 1.0)])

    def episode(key):
        def step(state, _):
            state = env.step(state, act(state.pipeline_state))
            return state, None
        state, _ = jax.lax.scan(step, env.reset(key), None, length=int(env.cfg.max_episode_steps))
        return state.metrics["success"], state.metrics["failure"]

    success, failure = jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(0), episodes))
    return {"overrides": overrides, "discriminates_within_m": reach_m, "episodes": episodes,
            "success_rate": float(success.mean()), "failure_rate": float(failure.mean())}


if __name__ == "__main__":
    runs = [sys.argv[1:]] if sys.argv[1:] else [[], ["env.agents.agent.eyes.resolution=[1,1]"]]
    results = [probe(ov) for ov in runs]
    print(f"{'eye':>7} | {'accuracy':>8} | by distance (m) {' '.join(results[0]['by_distance_m'])} | "
          f"by |cos| to the pole axis {' '.join(results[0]['by_abs_cos_to_pole_axis'])}")
    for r in results:
        print(f"{'x'.join(map(str, r['resolution'])):>7} | {r['accuracy']:8.3f} | "
              + " ".join(f"{v:.3f}" for v in r["by_distance_m"].values()) + " | "
              + " ".join(f"{v:.3f}" for v in r["by_abs_cos_to_pole_axis"].values()))
    bounds = [oracle(sys.argv[1:], d) for d in (0.0, 1.5, 2.0, 3.0, 5.0, 100.0)]
    print(f"\noracle policy | {'discriminates within (m)':>24} | success | failure")
    for b in bounds:
        print(f"{'':>13} | {b['discriminates_within_m']:24.1f} | {b['success_rate']:7.3f} | {b['failure_rate']:7.3f}")
    out = Path(__file__).parent / "detection_probe.json"
    out.write_text(json.dumps({"probe": results, "oracle": bounds}, indent=1))
    print(f"wrote {out}")
