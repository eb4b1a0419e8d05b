"""The compiled pieces of a config, shared by every command that trains or evaluates (`aci_jax.train`,
`aci_jax.eval`, `aci_jax.evo`, `train.seeds`): PPO on the training env, evaluation and recording on
the eval env. Equal configs share one `Built` (and so their compilations) within a process."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf

from aci_jax.config import ConfigError
from aci_jax.envs.env import Env, make_env
from aci_jax.rl.evaluation import final_keys, final_rounds, make_evaluate, make_recorder
from aci_jax.rl.ppo import PPO

_BUILT: dict[str, "Built"] = {}  # config yaml -> Built: equal configs share compilations


@dataclasses.dataclass(frozen=True)
class Built:
    """The compiled pieces of a config: PPO on the training env, evaluation on the eval env."""

    ppo: PPO
    eval_env: Env
    evaluate: Callable  # jitted (params, eyes, key) -> per-episode {return, success, failure}
    record: Callable  # jitted (params, eyes, key) -> frames of one env's evaluation episodes
    final_rounds: int  # rounds of `evaluate` in the final evaluation (0: none)

    @property
    def eval_mazes(self) -> list[str]:
        return [m.maze.name for m in self.eval_env.world.mazes]

    def final(self, params, eyes, seed: int) -> dict | None:
        """The final evaluation of chosen parameters on fresh episodes (`final_keys`), as numpy
        (rounds·eval_envs, n_mazes) arrays; None without one. Rounds of the compiled `evaluate`, so
        nothing new compiles (the population's `PopulationTrainer.final` maps the same rounds)."""
        if not self.final_rounds:
            return None
        outs = [jax.device_get(self.evaluate(params, eyes, k)) for k in final_keys(int(seed), self.final_rounds)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def build(cfg: DictConfig) -> Built:
    """PPO, evaluation and recording functions of a config (cached by the config)."""
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in ("env", "eval_env", "trainer", "train")
                                                        if k in cfg]))
    if key not in _BUILT:
        try:
            ppo = PPO(make_env(cfg), cfg.trainer)
        except ValueError as e:  # bad trainer values
            raise ConfigError(f"trainer: {e}") from None
        eval_env = make_env(cfg, eval=True)
        n_eval = int(cfg.train.get("eval_envs") or cfg.env.n_envs)
        _BUILT[key] = Built(ppo, eval_env, jax.jit(make_evaluate(ppo, eval_env, n_eval)),
                            jax.jit(make_recorder(ppo, eval_env, int(cfg.env.render.view_size))),
                            final_rounds(cfg.train, n_eval))
    return _BUILT[key]
