"""Evaluating a policy on the eval env variant: episode statistics, fitness and videos.

`make_evaluate` plays one deterministic episode per maze in each of `n_envs` envs (ACI's "one episode
per maze", with more envs for a steadier estimate); `make_recorder` plays the same episodes in one env
and renders each step (bird's-eye view and the eye images) for `write_videos`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.rl.fitness import fitness
from aci_jax.viz import birdseye, eye_mosaic, side_by_side, write_video

EVAL_METRICS = ("return", "success", "failure")
# fold_in tag of the final evaluation's keys: folded into the selection key, so no final key equals
# the selection key or any key split from it (tests/test_ppo.py checks the reset keys are disjoint)
FINAL_EVAL_TAG = 0xF1A1


def selection_key(seed):
    """The key of every periodic evaluation of a run trained with `seed` (the same key each time, so
    evaluations compare): the evaluations that choose the parameters kept (best/)."""
    return jax.random.PRNGKey(seed + 1)


def final_keys(seed, rounds: int):
    """`rounds` keys of the final evaluation of the chosen parameters: episodes no choice was made on."""
    return jax.random.split(jax.random.fold_in(selection_key(seed), FINAL_EVAL_TAG), rounds)


def final_rounds(train_cfg, n_eval_envs: int) -> int:
    """Rounds of `n_eval_envs` envs that make `train.final_eval_envs` (rounded up; 0: no final
    evaluation). Each round reuses the periodic evaluation's compiled program with a fresh key."""
    n = int(train_cfg.get("final_eval_envs") or 0)
    return -(-n // n_eval_envs)


def make_final_evaluate(evaluate, rounds: int):
    """`final(params, eyes, seed) -> {return, success, failure}`, each (rounds·n_envs, n_mazes):
    `evaluate` on each of `final_keys(seed, rounds)` (a `lax.map`: one round's memory at a time)."""

    def final(params, eyes, seed):
        out = jax.lax.map(lambda k: evaluate(params, eyes, k), final_keys(seed, rounds))
        return {k: v.reshape(-1, v.shape[-1]) for k, v in out.items()}

    return final


def make_evaluate(ppo, env, n_envs: int):
    """`evaluate(params, eyes, key) -> {return, success, failure}`, each (n_envs, n_mazes): the
    deterministic policy plays one episode per maze (the `cycle` schedule) in a `lax.scan`."""
    m = env.n_mazes
    steps = m * int(env.cfg.max_episode_steps)

    def evaluate(params, eyes, key):
        act = ppo.make_policy(params, eyes, deterministic=True)
        state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, n_envs), eyes)

        def step(carry, _):
            state, out, count = carry
            state = jax.vmap(env.step)(state, act(state.obs))
            done = (state.metrics["episode_done"] > 0) & (count < m)
            rows, slot = jnp.arange(n_envs), jnp.minimum(count, m - 1)
            out = {k: v.at[rows, slot].set(jnp.where(done, state.metrics[k], v[rows, slot]))
                   for k, v in out.items()}
            return (state, out, count + done), None

        out = {k: jnp.full((n_envs, m), jnp.nan) for k in EVAL_METRICS}
        (_, out, _), _ = jax.lax.scan(step, (state, out, jnp.zeros(n_envs, jnp.int32)), None, length=steps)
        return out

    return evaluate


def summarize(results: dict, maze_names: Sequence[str] = ()) -> dict:
    """Fitness (ACI) and means of an evaluation's per-episode arrays (n_envs, n_mazes), with the
    returns themselves; with several `maze_names`, also `<mean>/<maze>` means per maze."""
    r = {k: np.asarray(v, np.float64) for k, v in results.items()}
    means = {"mean_return": "return", "success_rate": "success", "failure_rate": "failure"}
    out = {"fitness": fitness(r["return"]), **{k: float(np.nanmean(r[v])) for k, v in means.items()},
           "episodes": int(np.isfinite(r["return"]).sum()), "returns": r["return"].tolist()}
    if len(maze_names) > 1:
        out.update({f"{k}/{m}": float(np.nanmean(r[v][:, i])) for i, m in enumerate(maze_names)
                    for k, v in means.items()})
    return out


def make_recorder(ppo, env, view_size: int):
    """`record(params, eyes, key) -> (birdseye (T, S, S, 3), eyes (T, E, R, R, 3), done (T,),
    maze (T,))` for one env playing one deterministic episode per maze."""
    steps = env.n_mazes * int(env.cfg.max_episode_steps)

    def record(params, eyes, key):
        act = ppo.make_policy(params, eyes, deterministic=True)

        def step(state, _):
            data, info = state.pipeline_state, state.info
            top = birdseye(env, data, info["episode"].wall_material, info["episode"].maze, view_size)
            images = env.eye_images(state.obs, info["eyes"])  # as the agent saw them (optics eye: with noise)
            nxt = env.step(state, act(state.obs))
            frame = (jnp.clip(top * 255, 0, 255).astype(jnp.uint8), images,
                     nxt.metrics["episode_done"] > 0, info["episode"].maze)
            return nxt, frame

        _, frames = jax.lax.scan(step, env.reset(key, eyes), None, length=steps)
        return frames

    return record


def write_videos(frames, eyes, env, directory: Path, prefix: str, fps: int = 10) -> list[Path]:
    """One video per maze episode (`<prefix>_<maze>.mp4`): bird's-eye view beside the eye mosaic."""
    top, images, done, maze = jax.device_get(frames)
    e = jax.device_get(eyes)
    directory.mkdir(parents=True, exist_ok=True)
    size = top.shape[1]
    ends = list(np.flatnonzero(done) + 1)
    paths = []
    for start, end in zip([0, *ends], ends):
        frames = [side_by_side(top[t] / 255.0, eye_mosaic(images[t], e.num_eyes, e.resolution,
                                                          cell=size // max(int(e.num_eyes[0]), 2)))
                  for t in range(start, end)]
        name = f"{prefix}_{env.world.mazes[int(maze[start])].maze.name}"
        paths.append(write_video(frames, directory / name, fps=fps))
    return paths
