"""Actor-critic networks as in ACI (SB3 `MultiInputPolicy` with a combined extractor), in Flax.

One feature extractor is shared by all eyes; its per-eye features are concatenated with the stacked
last actions and contact flags, then two MLPs give the policy mean and the value (by default both
read the same extractor, as SB3's; `share_encoder=False` gives the value its own). The policy is a
diagonal Gaussian with a state-independent log std (SB3's default); actions are clipped to [-1, 1]
by the env, log-probs are those of the unclipped sample, and the deterministic action is the
clipped mean. With `normalize_observations` (brax's option) every observation leaf is standardised
by running statistics kept in the variable collection `obs_norm` (updated by PPO, not by gradients),
so the statistics travel with the parameters into checkpoints and policies.

Morphology is data: inputs are static-maxima buffers, so every pixel outside the individual's
resolution is multiplied by `pixel_mask` and the features of eye slots beyond its eye count are
zeroed. Padding then contributes nothing: the outputs equal those of a network over a buffer
holding just the real eyes (with the head's rows of the padded slots dropped).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from brax.training.acme import running_statistics

from aci_jax.eyes.geometry import EyeBuffer, EyeParams, eye_placements, pixel_mask

ENCODERS = ("mlp", "cnn", "flatten")
OBS_CLIP = 10.0  # normalised observations are clipped to ±this (SB3's VecNormalize default)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Architecture (`trainer.network` in the config)."""

    encoder: str = "mlp"  # mlp | cnn | flatten: the per-eye feature extractor
    features: int = 64  # per-eye features (mlp, cnn)
    channels: tuple[int, ...] = (16, 32)  # cnn: 3x3 stride-1 conv layers
    hidden: tuple[int, ...] = (64, 64)  # policy and value MLPs (tanh)
    log_std_init: float = 0.0
    share_encoder: bool = True  # False: the value MLP has its own extractor (`v_encoder`)
    normalize_observations: bool = False  # standardise inputs by running statistics (`obs_norm`)

    @classmethod
    def from_config(cls, cfg: Any) -> "NetworkConfig":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown trainer.network key(s) {sorted(unknown)}")
        if cfg.get("encoder", cls.encoder) not in ENCODERS:
            raise ValueError(f"trainer.network.encoder={cfg['encoder']!r}; valid: {ENCODERS}")
        for k in ("channels", "hidden"):
            if k in cfg:
                cfg[k] = tuple(int(v) for v in cfg[k])
        return cls(**cfg)


def orthogonal(scale: float = 1.0) -> Callable:
    """SB3's orthogonal init, by Gram-Schmidt (twice) instead of LAPACK QR.

    Same distribution as `nn.initializers.orthogonal` (Q of a Gaussian matrix, positive R diagonal),
    but plain matmuls: a vmapped LAPACK QR next to the env in one XLA:CPU program deadlocks
    (jaxlib 0.10, seen with `jax.vmap(PPO.init)`).
    """

    def init(key: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
        rows, cols = math.prod(shape[:-1]), shape[-1]
        n, k = max(rows, cols), min(rows, cols)

        def column(q, j):
            earlier = (jnp.arange(k) < j).astype(q.dtype)
            v = q[:, j]
            for _ in range(2):
                v = v - q @ ((q.T @ v) * earlier)
            return q.at[:, j].set(v / jnp.linalg.norm(v)), None

        q, _ = jax.lax.scan(column, jax.random.normal(key, (n, k)), jnp.arange(k))
        return (scale * (q if rows >= cols else q.T)).reshape(shape).astype(dtype)

    return init


class EyeEncoder(nn.Module):
    """Features (..., E, F) of the stacked images (..., E, stack, R, R, 3) of E eye slots.

    One set of weights serves every eye. `mlp` flattens an eye's frames into a Dense layer, `cnn`
    runs 3x3 'SAME' convolutions (frames stacked as channels; re-masked after each layer, so padded
    pixels stay zero for any resolution from 1x1 up) then a Dense layer, `flatten` is the identity.
    """

    kind: str
    features: int
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x * mask[:, None, :, :, None]
        if self.kind == "flatten":
            return x.reshape(*x.shape[:-4], -1)
        if self.kind == "cnn":
            x = jnp.moveaxis(x, -4, -2)  # (..., E, R, R, stack, 3)
            x = x.reshape(*x.shape[:-2], -1)
            for c in self.channels:
                x = nn.relu(nn.Conv(c, (3, 3), padding="SAME", kernel_init=orthogonal(math.sqrt(2)))(x))
                x = x * mask[..., None]
            x = x.reshape(*x.shape[:-3], -1)
        else:
            x = x.reshape(*x.shape[:-4], -1)
        return nn.relu(nn.Dense(self.features, kernel_init=orthogonal(math.sqrt(2)))(x))


def _mlp(x: jax.Array, hidden: tuple[int, ...], out: int, gain: float, name: str) -> jax.Array:
    """Tanh MLP `name_0, name_1, ...` then a linear output layer `name_out` (orthogonal init)."""
    for i, h in enumerate(hidden):
        x = nn.tanh(nn.Dense(h, kernel_init=orthogonal(math.sqrt(2)), name=f"{name}_{i}")(x))
    return nn.Dense(out, kernel_init=orthogonal(gain), name=f"{name}_out")(x)


class ActorCritic(nn.Module):
    """(mean, log_std, value) for obs dicts with any leading batch shape, given the individual's eyes."""

    eye_names: tuple[str, ...]
    buffer: EyeBuffer
    cfg: NetworkConfig
    action_size: int = 2

    @nn.compact
    def __call__(self, obs: dict, eyes: EyeParams) -> tuple[jax.Array, jax.Array, jax.Array]:
        if self.cfg.normalize_observations:
            stats = self.variable("obs_norm", "stats", init_obs_stats, obs).value
            obs = running_statistics.normalize(obs, running_statistics.NestedMeanStd(stats["mean"], stats["std"]),
                                               max_abs_value=OBS_CLIP)
        _, _, eye_ok = eye_placements(eyes, self.buffer)
        images = jnp.stack([obs[n] for n in self.eye_names], -5)
        mask = pixel_mask(eyes, self.buffer)

        def inputs(name: str) -> jax.Array:
            f = EyeEncoder(self.cfg.encoder, self.cfg.features, self.cfg.channels, name=name)(images, mask)
            f = f * eye_ok[:, None]
            lead = f.shape[:-2]
            return jnp.concatenate([f.reshape(*lead, -1), obs["action"].reshape(*lead, -1),
                                    obs["contact"].reshape(*lead, -1)], -1)

        x = inputs("encoder")
        mean = _mlp(x, self.cfg.hidden, self.action_size, 0.01, "pi")
        value = _mlp(x if self.cfg.share_encoder else inputs("v_encoder"), self.cfg.hidden, 1, 1.0, "v")
        log_std = self.param("log_std", nn.initializers.constant(self.cfg.log_std_init), (self.action_size,))
        return mean, jnp.broadcast_to(log_std, mean.shape), value[..., 0]


def init_obs_stats(obs: dict) -> dict:
    """Running statistics of one (unbatched) observation: nothing seen yet (mean 0, std 1)."""
    s = running_statistics.init_state(obs)
    return {"count": jnp.float32(0), "mean": s.mean, "summed_variance": s.summed_variance, "std": s.std}


def update_obs_stats(stats: dict, batch: dict) -> dict:
    """Welford update (brax's `running_statistics.update`) of `stats` with a batch of observations
    (any leading batch shape). Pixels that never vary (the padding beyond an individual's eyes) keep
    std at its floor and normalise to 0, so masking still zeroes them."""
    s = running_statistics.RunningStatisticsState(count=stats["count"], mean=stats["mean"],
                                                   summed_variance=stats["summed_variance"], std=stats["std"])
    s = running_statistics.update(s, batch, std_min_value=1e-6)
    return {"count": jnp.asarray(s.count, jnp.float32), "mean": s.mean,
            "summed_variance": s.summed_variance, "std": s.std}


def log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    """Diagonal Gaussian log-density of (unclipped) actions, summed over the action axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi), -1)


def entropy(log_std: jax.Array) -> jax.Array:
    """Diagonal Gaussian entropy, summed over the action axis."""
    return jnp.sum(log_std + 0.5 * (1 + math.log(2 * math.pi)), -1)
