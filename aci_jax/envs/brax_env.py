"""The env as a `brax.envs.Env`, for brax's own trainers (e.g. `benchmarks/train_throughput.py`).

brax's PPO with `wrap_env=False` calls `reset` and `step` on whole batches and adds no wrappers, so
`BraxEnv` is vmapped itself and keeps the env's own episodes, time-outs and auto-reset (brax's
EpisodeWrapper and AutoResetWrapper would double them up). Its observation is one flat vector: each
eye's frame stack, then the stacked last actions and contact flags, in the order of the `flatten`
encoder's input (packed layout: the `pixels` stack in slot order instead of the eyes). The obs dict
the env steps on rides along in `info['obs_dict']`; `info` also holds the extras brax's PPO reads:
`truncation` (the env's own), `episode_metrics` and `episode_done`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from brax.envs.base import Env as BraxBaseEnv
from brax.envs.base import State

from aci_jax.envs.env import Env
from aci_jax.eyes.geometry import EyeParams

EPISODE_METRICS = ("return", "length", "success", "failure")
EXTRAS = ("obs_dict", "episode_metrics", "episode_done")


class BraxEnv(BraxBaseEnv):
    """A batch of `env`s for the individual `eyes` (default: the config's), with flat observations."""

    def __init__(self, env: Env, eyes: EyeParams | None = None):
        self.env = env
        self.eyes = env.default_eyes if eyes is None else eyes
        self.obs_keys = (*env.image_keys, "action", "contact")

    def reset(self, rng: jax.Array) -> State:
        """`rng`: (n_envs, 2) keys, one per env."""
        return self._to_brax(jax.vmap(self.env.reset, in_axes=(0, None))(rng, self.eyes))

    def step(self, state: State, action: jax.Array) -> State:
        info = {k: v for k, v in state.info.items() if k not in EXTRAS}
        inner = state.replace(obs=state.info["obs_dict"], info=info)
        return self._to_brax(jax.vmap(self.env.step)(inner, action))

    def flatten_obs(self, obs: dict) -> jax.Array:
        """(..., observation_size) vector of an obs dict with any leading batch shape."""
        lead = obs["action"].shape[:-2]
        return jnp.concatenate([obs[k].reshape(*lead, -1) for k in self.obs_keys], -1)

    def _to_brax(self, state: State) -> State:
        m = state.metrics
        info = {**state.info, "obs_dict": state.obs, "episode_done": m["episode_done"],
                "episode_metrics": {k: m[k] for k in EPISODE_METRICS}}
        return state.replace(obs=self.flatten_obs(state.obs), info=info)

    @property
    def observation_size(self) -> int:
        shapes = self.env.observation_size
        return sum(math.prod(shapes[k]) for k in self.obs_keys)

    @property
    def action_size(self) -> int:
        return self.env.action_size

    @property
    def backend(self) -> str:
        return "mjx"
