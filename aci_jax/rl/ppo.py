"""PPO as one pure JAX program (PureJaxRL style), with ACI's (SB3's) algorithm and defaults.

`PPO(env, trainer_cfg)` builds pure functions of arrays:
- `init(key, eyes) -> TrainState`: network, optimiser and `n_envs` reset envs of one individual;
- `iteration(state) -> (state, metrics)`: a `lax.scan` rollout of `n_steps` over the vmapped env,
  (with `network.normalize_observations`, the running observation statistics updated from it, as in
  brax), GAE, then `n_epochs` of shuffled minibatch updates (clipped surrogate, optionally clipped value
  loss, entropy bonus, advantage normalisation, global-norm gradient clipping, Adam);
- `train(key, eyes) -> (state, metrics)`: init, then a `lax.scan` of `n_iterations` iterations.
`train` vmaps over a population axis of (keys, eyes); `jit_init` / `jit_iteration` step one
individual from Python, to log or checkpoint between iterations.

Time-outs (`info['truncation']`) are not terminal: as in brax, their step is masked out of GAE
(the env has already reset, so there is no final observation to bootstrap from).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from brax.envs.base import State
from brax.training.agents.ppo.losses import compute_gae
from flax import struct

from aci_jax.eyes.geometry import EyeParams
from aci_jax.rl.networks import ActorCritic, NetworkConfig, entropy, log_prob, update_obs_stats

EPISODE_METRICS = ("return", "success", "failure", "length")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters (`configs/trainer/ppo.yaml`); see that file for the choices."""

    mode: str = "ppo"  # ppo | test (no training: a synthetic fitness of the eyes, see train.py)
    total_timesteps: int = 1_000_000
    n_steps: int = 128
    n_minibatches: int = 32
    n_epochs: int = 10
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # constant | linear (to 0 over training)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_vf: float | None = None
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    network: NetworkConfig = NetworkConfig()

    @classmethod
    def from_config(cls, cfg: Any) -> "PPOConfig":
        cfg = dict(cfg or {})
        cfg["network"] = NetworkConfig.from_config(cfg.get("network"))
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown trainer key(s) {sorted(unknown)}")
        for key, valid in (("mode", ("ppo", "test")), ("lr_schedule", ("constant", "linear"))):
            if cfg.get(key, getattr(cls, key)) not in valid:
                raise ValueError(f"trainer.{key}={cfg[key]!r}; valid: {list(valid)}")
        for f in dataclasses.fields(cls):  # YAML numbers such as 1e6 arrive as floats
            if isinstance(f.default, (int, float)) and f.name in cfg:
                cfg[f.name] = type(f.default)(cfg[f.name])
        return cls(**cfg)


@struct.dataclass
class TrainState:
    """Everything one individual's training carries between iterations."""

    params: Any
    opt_state: optax.OptState
    env_state: State  # batched over n_envs
    eyes: EyeParams  # the individual's eyes (unbatched)
    rng: jax.Array
    iteration: jax.Array  # int32: iterations done
    env_steps: jax.Array  # int32: env steps taken (all envs)


@struct.dataclass
class Transition:
    """One rollout step of the batched env (leaves: (n_envs, ...); stacked over time by scan)."""

    obs: dict
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array
    truncation: jax.Array
    episode: dict  # EPISODE_METRICS + episode_done, from the env's metrics after the step


class PPO:
    """Pure PPO functions for one env and trainer config (see the module docstring)."""

    def __init__(self, env, cfg: Any):
        self.env = env
        self.cfg = cfg if isinstance(cfg, PPOConfig) else PPOConfig.from_config(cfg)
        c = self.cfg
        self.n_envs = int(env.cfg.n_envs)
        self.batch_size = c.n_steps * self.n_envs
        if self.batch_size % c.n_minibatches:
            raise ValueError(f"n_steps*n_envs={self.batch_size} is not divisible by n_minibatches={c.n_minibatches}")
        self.n_iterations = max(1, c.total_timesteps // self.batch_size)
        self.network = ActorCritic(tuple(env.eye_names), env.buffer, c.network, env.action_size)
        n_updates = self.n_iterations * c.n_epochs * c.n_minibatches
        lr = c.learning_rate if c.lr_schedule == "constant" else optax.linear_schedule(c.learning_rate, 0.0, n_updates)
        self.optimizer = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(lr, eps=1e-5))
        self.jit_init = jax.jit(self.init)
        self.jit_iteration = jax.jit(self.iteration)

    # -- public ------------------------------------------------------------------------------------

    def init(self, key: jax.Array, eyes: EyeParams | None = None) -> TrainState:
        """Fresh parameters, optimiser state and `n_envs` reset envs for the individual `eyes`."""
        eyes = self.env.default_eyes if eyes is None else eyes
        k_net, k_env, rng = jax.random.split(key, 3)
        env_state = jax.vmap(self.env.reset, in_axes=(0, None))(jax.random.split(k_env, self.n_envs), eyes)
        params = self.network.init(k_net, jax.tree.map(lambda x: x[0], env_state.obs), eyes)
        return TrainState(params, self.optimizer.init(_trainable(params)), env_state, eyes, rng,
                          jnp.int32(0), jnp.int32(0))

    def iteration(self, ts: TrainState) -> tuple[TrainState, dict]:
        """One rollout of n_steps x n_envs, then n_epochs of minibatch updates."""
        rng, k_roll, k_upd = jax.random.split(ts.rng, 3)
        env_state, traj = self._rollout(ts.params, ts.eyes, ts.env_state, k_roll)
        params = ts.params
        if self.cfg.network.normalize_observations:
            params = {**params, "obs_norm": {"stats": update_obs_stats(params["obs_norm"]["stats"], traj.obs)}}
        _, _, last_value = self.network.apply(params, env_state.obs, ts.eyes)
        params, opt_state, losses = self._update(params, ts.opt_state, ts.eyes, traj, last_value, k_upd)
        ts = ts.replace(params=params, opt_state=opt_state, env_state=env_state, rng=rng,
                        iteration=ts.iteration + 1, env_steps=ts.env_steps + self.batch_size)
        return ts, {"env_steps": ts.env_steps, **_episode_stats(traj.episode), **losses}

    def train(self, key: jax.Array, eyes: EyeParams | None = None) -> tuple[TrainState, dict]:
        """init + n_iterations iterations; metrics stacked over iterations. Pure: vmap it freely."""
        return jax.lax.scan(lambda ts, _: self.iteration(ts), self.init(key, eyes), None,
                            length=self.n_iterations)

    def make_policy(self, params: Any, eyes: EyeParams | None = None, deterministic: bool = True):
        """`act(obs, key=None) -> action` for obs with any leading batch shape (clipped to [-1, 1])."""
        eyes = self.env.default_eyes if eyes is None else eyes

        def act(obs: dict, key: jax.Array | None = None) -> jax.Array:
            mean, log_std, _ = self.network.apply(params, obs, eyes)
            if not deterministic:
                mean = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
            return jnp.clip(mean, -1.0, 1.0)

        return act

    # -- pieces ------------------------------------------------------------------------------------

    def _rollout(self, params, eyes, env_state: State, key: jax.Array) -> tuple[State, Transition]:
        def step(state: State, k: jax.Array):
            mean, log_std, value = self.network.apply(params, state.obs, eyes)
            action = mean + jnp.exp(log_std) * jax.random.normal(k, mean.shape)
            nxt = jax.vmap(self.env.step)(state, action)
            episode = {m: nxt.metrics[m] for m in (*EPISODE_METRICS, "episode_done")}
            return nxt, Transition(state.obs, action, log_prob(mean, log_std, action), value,
                                   nxt.reward, nxt.done, nxt.info["truncation"], episode)

        return jax.lax.scan(step, env_state, jax.random.split(key, self.cfg.n_steps))

    def _update(self, params, opt_state, eyes, traj: Transition, last_value, key):
        """GAE over the rollout, then n_epochs of shuffled minibatch steps; mean losses."""
        c = self.cfg
        targets, advantages = gae(traj.reward, traj.value, traj.done, traj.truncation, last_value, c.gamma, c.gae_lambda)
        data = (traj.obs, traj.action, traj.log_prob, traj.value, advantages, targets)
        data = jax.tree.map(lambda x: x.reshape(self.batch_size, *x.shape[2:]), data)
        fixed = {k: v for k, v in params.items() if k != "params"}  # obs_norm: not trained by gradients
        grad_fn = jax.value_and_grad(lambda p, mb: self._loss({**p, **fixed}, eyes, mb), has_aux=True)

        def minibatch(carry, mb):
            params, opt_state = carry
            (_, aux), grads = grad_fn(params, mb)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), aux

        def epoch(carry, k):
            perm = jax.random.permutation(k, self.batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape(c.n_minibatches, -1, *x.shape[1:]), data)
            return jax.lax.scan(minibatch, carry, mbs)

        (params, opt_state), aux = jax.lax.scan(epoch, (_trainable(params), opt_state), jax.random.split(key, c.n_epochs))
        return {**params, **fixed}, opt_state, jax.tree.map(jnp.mean, aux)

    def _loss(self, params, eyes, mb) -> tuple[jax.Array, dict]:
        """SB3's PPO loss on one minibatch (`loss_terms`) of the network's outputs."""
        obs, action, old_log_prob, old_value, adv, target = mb
        mean, log_std, value = self.network.apply(params, obs, eyes)
        return loss_terms(log_prob(mean, log_std, action), old_log_prob, adv, value, old_value, target,
                          log_std, self.cfg)


def gae(reward, value, done, truncation, last_value, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """(value targets, advantages = targets − values) of a time-major rollout, by brax's GAE.

    A terminal step (done, not a time-out) does not bootstrap; a time-out's step is masked out (its
    target is its own value, its advantage 0: the env has already reset, so there is no final
    observation to bootstrap from, as in brax); the rollout's last step bootstraps from `last_value`."""
    termination = done * (1 - truncation)
    targets, _ = compute_gae(truncation, termination, reward, value, last_value, lambda_=lam, discount=gamma)
    return targets, targets - value


def loss_terms(new_log_prob, old_log_prob, adv, value, old_value, target, log_std, c: PPOConfig) -> tuple[jax.Array, dict]:
    """SB3's PPO loss of a minibatch: clipped surrogate on (optionally normalised) advantages, value
    loss (clipped PPO2-style when `clip_range_vf` is set), entropy bonus; and its diagnostics."""
    log_ratio = new_log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    if c.normalize_advantage:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - c.clip_range, 1 + c.clip_range) * adv))
    value_loss = (target - value) ** 2
    if c.clip_range_vf is not None:
        clipped = old_value + jnp.clip(value - old_value, -c.clip_range_vf, c.clip_range_vf)
        value_loss = jnp.maximum(value_loss, (target - clipped) ** 2)
    value_loss = jnp.mean(value_loss)
    ent = jnp.mean(entropy(log_std))
    loss = policy_loss + c.vf_coef * value_loss - c.ent_coef * ent
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent,
                  "approx_kl": jnp.mean(ratio - 1 - log_ratio),
                  "clip_fraction": jnp.mean(jnp.abs(ratio - 1) > c.clip_range)}


def _trainable(variables: dict) -> dict:
    """The network variables the optimiser updates: the `params` collection."""
    return {"params": variables["params"]}


def _episode_stats(ep: dict) -> dict:
    """Mean return / success / failure / length of the episodes that ended in the rollout (NaN: none)."""
    done = ep["episode_done"]
    n = done.sum()
    stats = {f"episode_{m}": jnp.where(n > 0, (ep[m] * done).sum() / jnp.maximum(n, 1), jnp.nan)
             for m in EPISODE_METRICS}
    return {"episodes": n, **stats}


def make_train(env, cfg: Any) -> PPO:
    """The PPO functions of an env and a trainer config (`cfg.trainer` or a PPOConfig)."""
    return PPO(env, cfg)


def train(env, cfg: Any, key: jax.Array, eyes: EyeParams | None = None) -> tuple[Any, dict]:
    """Train one individual; (params, per-iteration metrics). Pure: jit/vmap `PPO.train` for speed."""
    ts, metrics = PPO(env, cfg).train(key, eyes)
    return ts.params, metrics
