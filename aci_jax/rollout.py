"""`python -m aci_jax.rollout exp=detection [overrides]`: run a batch of envs with a simple policy.

Prints env-steps/s and writes into the run folder a video of one env (bird's-eye view, third-person
view and the agent's eye mosaic) and `eyes.png` (the eye mosaic at one step). With the optics eye,
`rollout.apertures=[0.05,0.2,1.0]` shows that env's episode through each aperture side by side.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from aci_jax.config import CONFIG_DIR
from aci_jax.envs.env import Env, make_env
from aci_jax.eyes.optics import psf_window_warning
from aci_jax.runs import RunFolder, command_errors, command_run_dir
from aci_jax.viz import birdseye, captioned, eye_mosaic, side_by_side, third_person, to_uint8, write_video


def nearest_object_policy(env: Env):
    """Scripted: full speed, steering towards the nearest object (privileged positions)."""

    def act(state, key):
        data = state.pipeline_state
        pos = data.qpos[env.agent.qpos_adr[:2]]
        objects = env.object_xy(data)
        target = objects[jnp.argmin(jnp.linalg.norm(objects - pos, axis=-1))]
        return jnp.array([1.0, env.steer(data, jnp.arctan2(target[1] - pos[1], target[0] - pos[0]))])

    return act


def random_policy(env: Env):
    return lambda state, key: jax.random.uniform(key, (env.action_size,), minval=-1, maxval=1)


class _ApertureViews:
    """The video env's episode once per aperture (`rollout.apertures`): the same reset key, the
    same actions (the rollout's policies ignore the eyes) and the same noise draws, so the copies
    move together and differ only in what the optics eye forms: blur, light and noise side by side."""

    def __init__(self, env: Env, policy, key: jax.Array, apertures):
        base = env.default_eyes
        self.apertures = [float(x) for x in apertures]
        through = lambda a: base.replace(optics=base.optics.replace(aperture=jnp.full_like(base.optics.aperture, a)))
        for a in self.apertures:  # a blur wider than psf_size is cut: say so
            msg = psf_window_warning(through(a).optics, env.optics, base.fov, base.resolution)
            if msg:
                warnings.warn(msg, stacklevel=2)
        eyes = jax.tree.map(lambda *x: jnp.stack(x), *[through(a) for a in self.apertures])
        self.states = jax.jit(jax.vmap(env.reset, in_axes=(None, 0)))(key, eyes)
        self._step = jax.jit(lambda s, k: jax.vmap(lambda x: env.step(x, policy(x, k)))(s))
        self._images = jax.jit(jax.vmap(lambda s: env.eye_images(s.obs, s.info["eyes"])))

    def step(self, key: jax.Array) -> None:
        self.states = self._step(self.states, key)

    def images(self):
        return self._images(self.states)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Roll out `rollout.n_envs` envs for `rollout.n_steps` steps; write the video and eyes.png."""
    r = cfg.rollout
    env = make_env(cfg)
    policy = {"random": random_policy, "nearest_object": nearest_object_policy}[r.policy](env)
    n, video_env = int(r.n_envs), int(r.video_env)

    @jax.jit
    def step(states, key):
        actions = jax.vmap(policy)(states, jax.random.split(key, n))
        return jax.vmap(env.step)(states, actions)

    @jax.jit
    def frame(state):
        data = state.pipeline_state
        top = birdseye(env, data, state.info["episode"].wall_material, state.info["episode"].maze, int(r.view_size))
        behind = third_person(env, data, state.info["episode"].wall_material, int(r.view_size))
        return top, behind, env.eye_images(state.obs, state.info["eyes"])  # the frame the agent sees (optics: noise too)

    key = jax.random.PRNGKey(int(cfg.seed))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(key, n))
    keys = jax.random.split(jax.random.PRNGKey(int(cfg.seed) + 1), int(r.n_steps) + 1)
    jax.block_until_ready(step(states, keys[-1]))  # compile outside the timing
    e = env.eyes_cfg
    apertures = r.get("apertures")
    views = _ApertureViews(env, policy, jax.random.split(key, n)[video_env], apertures) if apertures else None

    def mosaics(images, cell: int) -> list:
        tiles = [eye_mosaic(x, e.num_eyes, e.resolution, cell=cell) for x in images]
        return tiles if views is None else [captioned(m, f"aperture {a:g}") for m, a in zip(tiles, views.apertures)]

    one = lambda s: jax.tree.map(lambda x: x[video_env], s)
    frames, returns, successes, episodes = [], 0.0, 0.0, 0.0
    mosaic_step = int(r.n_steps) // 2
    sim_time = 0.0
    for t in range(int(r.n_steps)):
        top, behind, eyes = jax.device_get(frame(one(states)))
        seen = [eyes] if views is None else list(jax.device_get(views.images()))
        frames.append(side_by_side(top, behind, *mosaics(seen, int(r.view_size) // max(e.num_eyes[0], 2))))
        if t == mosaic_step:
            import imageio.v2 as imageio

            imageio.imwrite(run_dir / "eyes.png", to_uint8(side_by_side(*mosaics(seen, 128))))
        t0 = time.perf_counter()
        states = jax.block_until_ready(step(states, keys[t]))
        sim_time += time.perf_counter() - t0
        if views is not None:
            views.step(jax.random.split(keys[t], n)[video_env])  # the video env's own action key
        done = np.asarray(states.metrics["episode_done"]) > 0
        returns += float(np.asarray(states.metrics["return"])[done].sum())
        successes += float(np.asarray(states.metrics["success"])[done].sum())
        episodes += float(done.sum())
    video = write_video(frames, run_dir / "rollout", fps=int(r.fps))
    stats = {"env_steps_per_s": n * int(r.n_steps) / sim_time, "episodes": episodes,
             "mean_return": returns / max(episodes, 1), "success_rate": successes / max(episodes, 1),
             "video": str(video), "eyes_png": str(run_dir / "eyes.png")}
    print(f"[rollout] {cfg.expname}: {n} envs x {r.n_steps} steps, policy={r.policy}: "
          f"{stats['env_steps_per_s']:,.0f} env-steps/s | episodes {episodes:.0f}, mean return "
          f"{stats['mean_return']:.2f}, success {stats['success_rate']:.2f}")
    print(f"[rollout] wrote {video} and {run_dir / 'eyes.png'}")
    return stats


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    with command_errors("rollout"):
        run_dir = command_run_dir(cfg, "rollout")
        with RunFolder.open(run_dir, cfg, "rollout") as folder:  # its own folder, never a training run's
            run(folder.cfg, folder.path)


if __name__ == "__main__":
    main()
