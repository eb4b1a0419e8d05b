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

Packed layout (`env.render.max_pixels`): the input is `pixels` (stack, P, 3) and the parameters are
those of the buffer layout with the same maxima (same names and shapes, same init), evaluated on the
individual's real pixels only: `mlp` gathers, per slot p at (eye, row, col), the rows W[:, row, col]
of its Dense kernel seen as (stack, H, W, 3, F), sums x_p · W over each eye's slots
(`jax.ops.segment_sum` by eye) and adds the bias; `flatten` gathers the policy's and value's first
kernels seen as (E, stack, H, W, 3, h) the same way. Outputs equal the buffer layout's to float
rounding. `cnn` unpacks to buffer images first (correct, but it costs what the buffer layout does).

Genes as masks (`EyeParams.frame_stack`, `policy_width`; None: off): frames older than the newest k
are zeroed at the input, and hidden units >= w of the policy and value MLPs are zeroed, so the
outputs equal those of a width-w network holding the leading weight sub-blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from brax.training.acme import running_statistics

from aci_jax.eyes.geometry import EyeBuffer, EyeParams, eye_placements, packed_slots, pixel_mask, unpack

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


@dataclasses.dataclass(frozen=True)
class Slots:
    """The packed layout's slots of one individual: eye, row, col (P,) int and the image size."""

    eye: jax.Array
    row: jax.Array
    col: jax.Array
    n_eyes: int
    height: int
    width: int


class _DenseParams(nn.Module):
    """nn.Dense's variables (same names, shapes and init) for a layer evaluated by hand."""

    n_in: int
    features: int
    kernel_init: Callable

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", self.kernel_init, (self.n_in, self.features), jnp.float32)
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)


@dataclasses.dataclass(frozen=True)
class PackedFlat:
    """`flatten` input in the packed layout: pixels (..., stack, P, 3) (zero in unused slots) and
    the extra inputs (..., n) that follow the eyes in the buffer layout's flat vector."""

    pixels: jax.Array
    slots: Slots
    extra: jax.Array

    def dense(self, features: int, kernel_init: Callable, name: str) -> jax.Array:
        """The buffer layout's Dense over [eyes (E, stack, H, W, 3) flattened, extra], on real pixels."""
        sl, stack = self.slots, self.pixels.shape[-3]
        n = sl.n_eyes * stack * sl.height * sl.width * 3
        kernel, bias = _DenseParams(n + self.extra.shape[-1], features, kernel_init, name=name)()
        w = kernel[:n].reshape(sl.n_eyes, stack, sl.height, sl.width, 3, features)[sl.eye, :, sl.row, sl.col]
        return jnp.einsum("...spc,pscf->...f", self.pixels, w) + self.extra @ kernel[n:] + bias


class EyeEncoder(nn.Module):
    """Features (..., E, F) of the stacked images (..., E, stack, H, W, 3) of E eye slots.

    One set of weights serves every eye. `mlp` flattens an eye's frames into a Dense layer, `cnn`
    runs 3x3 'SAME' convolutions (frames stacked as channels; re-masked after each layer, so padded
    pixels stay zero for any resolution from 1x1 up) then a Dense layer, `flatten` is the identity.
    With `slots` (packed layout, `mlp` only), x is the packed pixels (..., stack, P, 3): the Dense
    layer's kernel rows of each slot's (row, col) are gathered and summed per eye.
    """

    kind: str
    features: int
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, slots: Slots | None = None) -> jax.Array:
        if slots is not None:
            assert self.kind == "mlp", self.kind
            stack, f = x.shape[-3], self.features
            kernel, bias = _DenseParams(stack * slots.height * slots.width * 3, f, orthogonal(math.sqrt(2)),
                                        name="Dense_0")()
            w = kernel.reshape(stack, slots.height, slots.width, 3, f)[:, slots.row, slots.col]  # (stack, P, 3, F)
            per_slot = jnp.moveaxis(jnp.einsum("...spc,spcf->...pf", x, w), -2, 0)  # (P, ..., F)
            per_eye = jax.ops.segment_sum(per_slot, slots.eye, num_segments=slots.n_eyes, indices_are_sorted=True)
            return nn.relu(jnp.moveaxis(per_eye, 0, -2) + bias)
        x = x * mask[:, None, :, :, None]
        if self.kind == "flatten":
            return x.reshape(*x.shape[:-4], -1)
        if self.kind == "cnn":
            x = jnp.moveaxis(x, -4, -2)  # (..., E, H, W, stack, 3)
            x = x.reshape(*x.shape[:-2], -1)
            for c in self.channels:
                x = nn.relu(nn.Conv(c, (3, 3), padding="SAME", kernel_init=orthogonal(math.sqrt(2)))(x))
                x = x * mask[..., None]
            x = x.reshape(*x.shape[:-3], -1)
        else:
            x = x.reshape(*x.shape[:-4], -1)
        return nn.relu(nn.Dense(self.features, kernel_init=orthogonal(math.sqrt(2)))(x))


def _dense(x: jax.Array | PackedFlat, features: int, kernel_init: Callable, name: str) -> jax.Array:
    if isinstance(x, PackedFlat):
        return x.dense(features, kernel_init, name)
    return nn.Dense(features, kernel_init=kernel_init, name=name)(x)


def _mlp(x: jax.Array | PackedFlat, hidden: tuple[int, ...], out: int, gain: float, name: str,
         width: jax.Array | None = None) -> jax.Array:
    """Tanh MLP `name_0, name_1, ...` then a linear output layer `name_out` (orthogonal init);
    hidden units >= `width` (the policy-width gene) are zeroed."""
    for i, h in enumerate(hidden):
        x = nn.tanh(_dense(x, h, orthogonal(math.sqrt(2)), f"{name}_{i}"))
        if width is not None:
            x = x * (jnp.arange(h) < width)
    return _dense(x, out, orthogonal(gain), f"{name}_out")


def newest_frames(obs: dict, k: jax.Array | None) -> dict:
    """`obs` with all but the newest `k` frames of every stacked leaf zeroed (the frame-stack gene)."""
    if k is None:
        return obs
    out = {}
    for key, x in obs.items():
        axis = x.ndim - {"action": 2, "contact": 2, "pixels": 3}.get(key, 4)  # eye images: (stack, H, W, 3)
        n = x.shape[axis]
        keep = jnp.arange(n) >= n - k
        out[key] = x * keep.reshape(n, *(1,) * (x.ndim - axis - 1))
    return out


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
        obs = newest_frames(obs, eyes.frame_stack)
        b, kind = self.buffer, self.cfg.encoder
        _, _, eye_ok = eye_placements(eyes, b)
        mask = pixel_mask(eyes, b)
        slots = None
        if not b.packed:
            images = jnp.stack([obs[n] for n in self.eye_names], -5)
        elif kind == "cnn":  # convolutions need images: unpack (costs the buffer layout's pixels)
            images = jnp.moveaxis(unpack(obs["pixels"], eyes, b), -5, -4)  # (..., E, stack, H, W, 3)
        else:  # mlp, flatten: gather kernel rows of the real pixels
            eye, row, col, valid = packed_slots(eyes, b)
            slots = Slots(eye, row, col, b.max_eyes, b.height, b.width)
            images = obs["pixels"] * valid[:, None]
        lead = obs["action"].shape[:-2]
        extra = jnp.concatenate([obs["action"].reshape(*lead, -1), obs["contact"].reshape(*lead, -1)], -1)

        def inputs(name: str) -> jax.Array | PackedFlat:
            if slots is not None and kind == "flatten":
                return PackedFlat(images, slots, extra)
            f = EyeEncoder(kind, self.cfg.features, self.cfg.channels, name=name)(images, mask, slots)
            f = f * eye_ok[:, None]
            return jnp.concatenate([f.reshape(*lead, -1), extra], -1)

        x = inputs("encoder")
        width = eyes.policy_width
        mean = _mlp(x, self.cfg.hidden, self.action_size, 0.01, "pi", width)
        value = _mlp(x if self.cfg.share_encoder else inputs("v_encoder"), self.cfg.hidden, 1, 1.0, "v", width)
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
