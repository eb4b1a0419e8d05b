"""A generation is one program: PPO training and ACI's fitness of every individual, vmapped.

`PopulationTrainer(ppo, eval_env, n_eval_envs, eval_every)` gives pure functions of ONE individual
(its seed and eyes); `jax.vmap` makes them a population's:
- `init(seed, eyes) -> Member`: `PPO.init(PRNGKey(seed), eyes)` and an empty best-evaluation record;
- `segment(member, length) -> (member, metrics)`: `length` PPO iterations (an individual whose
  losses or parameters turn NaN/inf is frozen at its last good state and marked `diverged`; one that
  early-stops is frozen too), then one evaluation on the eval env; the best evaluation's parameters
  are kept on device, as `aci_jax.train` keeps them in best/;
- `train_and_evaluate(seed, eyes) -> (member, fitness, metrics)`: init and every segment in one
  program (what a GPU runs whole; the command drives segments from Python to report progress and
  checkpoint between them).
- `final(member) -> metrics`: the final evaluation of the best parameters on fresh episodes
  (`final_keys`: keys no periodic evaluation used), `final_rounds` rounds of the evaluation.
Evaluations happen where `aci_jax.train` makes them (every `train.eval_every` iterations and at the
last), with the same key (`selection_key(seed)`), so an individual's fitness and parameters equal its
solo `aci_jax.train` run's. Fitness is ACI's (an evaluation's returns: drop 1.5-IQR outliers, then
the median of the top quarter), computed on device by `fitness_of`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aci_jax.eyes.geometry import EyeParams
from aci_jax.rl.evaluation import make_evaluate, make_final_evaluate, selection_key
from aci_jax.rl.ppo import PPO, TrainState

TRAIN_METRICS = ("episode_return", "episode_success")


@struct.dataclass
class Member:
    """One individual's training and its best evaluation so far (a population: leading axis)."""

    ts: TrainState
    seed: jax.Array  # int32
    best_params: Any
    best_mean: jax.Array  # mean return of the best evaluation (-inf: none yet)
    best_fitness: jax.Array
    best_success: jax.Array
    best_step: jax.Array  # env steps of the best evaluation
    since_best: jax.Array  # evaluations since the best (early stop)
    active: jax.Array  # bool: still training
    diverged: jax.Array  # bool: stopped by NaN/inf


def fitness_of(returns: jax.Array) -> jax.Array:
    """ACI's fitness of evaluation returns (NaN: missing), as `aci_jax.rl.fitness.fitness`, in jnp."""
    r = jnp.ravel(returns).astype(jnp.float32)
    fin = jnp.isfinite(r)
    q1, q3 = jnp.nanpercentile(jnp.where(fin, r, jnp.nan), jnp.array([25.0, 75.0]))
    iqr = q3 - q1
    keep = fin & (r >= q1 - 1.5 * iqr) & (r <= q3 + 1.5 * iqr)
    p75 = jnp.nanpercentile(jnp.where(keep, r, jnp.nan), 75.0)
    top = keep & (r >= p75)
    return jnp.where(keep.any(), jnp.nanmedian(jnp.where(top, r, jnp.nan)), -jnp.inf)


def _finite(ts: TrainState, metrics: dict) -> jax.Array:
    leaves = jax.tree.leaves(ts.params) + [metrics[k] for k in ("policy_loss", "value_loss", "entropy")]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def segment_lengths(n_iterations: int, eval_every: int) -> list[int]:
    """Iterations per segment: evaluations after every `eval_every` iterations and after the last
    (as `aci_jax.train`); one segment when `eval_every` is 0."""
    if not eval_every:
        return [n_iterations]
    lengths = [eval_every] * (n_iterations // eval_every)
    return lengths + ([n_iterations % eval_every] if n_iterations % eval_every else [])


class PopulationTrainer:
    def __init__(self, ppo: PPO, eval_env, n_eval_envs: int, eval_every: int, early_stop: int | None = None,
                 final_rounds: int = 0):
        self.ppo = ppo
        self.evaluate = make_evaluate(ppo, eval_env, n_eval_envs)
        self.final_rounds = final_rounds
        self.lengths = segment_lengths(ppo.n_iterations, int(eval_every or 0))
        self.early_stop = early_stop

    def init(self, seed: jax.Array, eyes: EyeParams) -> Member:
        ts = self.ppo.init(jax.random.PRNGKey(seed), eyes)
        f = jnp.float32
        return Member(ts, jnp.asarray(seed, jnp.int32), ts.params, f(-jnp.inf), f(-jnp.inf), f(jnp.nan),
                      jnp.int32(-1), jnp.int32(0), jnp.bool_(True), jnp.bool_(False))

    @property
    def program_length(self) -> int:
        """Iterations of the one compiled segment program (the longest segment): shorter segments run
        it with `n_iter` < this, the extra iterations skipped by a `lax.cond` (not computed)."""
        return max(self.lengths)

    def segment(self, m: Member, length: int, n_iter: jax.Array | None = None) -> tuple[Member, dict]:
        """`length` PPO iterations, of which only the first `n_iter` (default: all) run, then one
        evaluation. Pass `n_iter` unbatched (vmap in_axes None): the skip is then a real branch, so one
        program of `program_length` serves every segment length instead of one compile per length."""
        def step(carry, i):
            ts, active, diverged = carry
            if n_iter is None:
                new, metrics = self.ppo.iteration(ts)
                run = jnp.bool_(True)
            else:
                run = i < n_iter
                new, metrics = jax.lax.cond(run, self.ppo.iteration, self._skipped, ts)
            ok = _finite(new, metrics)
            keep = active & ok & run
            ts = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, ts)
            return (ts, active & (ok | ~run), diverged | (active & ~ok & run)), {
                k: jnp.where(keep, metrics[k], jnp.nan) for k in TRAIN_METRICS}

        (ts, active, diverged), train = jax.lax.scan(step, (m.ts, m.active, m.diverged), jnp.arange(length))
        out = self.evaluate(ts.params, ts.eyes, selection_key(m.seed))
        mean = jnp.nanmean(out["return"])
        fit = fitness_of(out["return"])
        success = jnp.nanmean(out["success"])
        # an individual frozen before this segment repeats its last evaluation: it cannot improve
        better = (mean > m.best_mean) & m.active
        pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(better, x, y), a, b)
        since = jnp.where(better, 0, m.since_best + m.active.astype(jnp.int32))
        if self.early_stop is not None:
            active = active & (since < self.early_stop)
        m = Member(ts, m.seed, pick(ts.params, m.best_params), jnp.where(better, mean, m.best_mean),
                   jnp.where(better, fit, m.best_fitness), jnp.where(better, success, m.best_success),
                   jnp.where(better, ts.env_steps, m.best_step), since, active, diverged)
        metrics = {"train_return": jnp.nanmean(train["episode_return"]),
                   "train_success": jnp.nanmean(train["episode_success"]),
                   "eval_return": mean, "eval_success": success, "eval_fitness": fit, "env_steps": ts.env_steps}
        return m, metrics

    def _skipped(self, ts: TrainState) -> tuple[TrainState, dict]:
        """An iteration not run: the state as it is, and metrics shaped as an iteration's (zeros)."""
        shapes = jax.eval_shape(self.ppo.iteration, ts)[1]
        return ts, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    def final(self, m: Member) -> dict:
        """The final evaluation of the best parameters on fresh episodes: fitness, success, mean return."""
        out = make_final_evaluate(self.evaluate, self.final_rounds)(m.best_params, m.ts.eyes, m.seed)
        return {"final_fitness": fitness_of(out["return"]), "final_success": jnp.nanmean(out["success"]),
                "final_return": jnp.nanmean(out["return"])}

    def train_and_evaluate(self, seed: jax.Array, eyes: EyeParams) -> tuple[Member, jax.Array, list[dict]]:
        """The whole training of one individual; (member, fitness, metrics per segment). Pure."""
        m = self.init(seed, eyes)
        metrics = []
        for length in self.lengths:
            m, mt = self.segment(m, length)
            metrics.append(mt)
        return m, m.best_fitness, metrics


class OverDevices:
    """Population programs split over devices: `program(fn)` is `jit(vmap(fn))` with the leading
    (population) axis of every argument and result sharded over `devices` through `shard_map` (each
    device runs vmap over its share; individuals never communicate, so no collective is compiled in,
    not even inside the renderer's while loops as plain `jit` sharding would). One device: plain
    `jit(vmap(fn))`. `put` places a population's host arrays (the same on every process) for it;
    `get` brings a program's results back to host numpy, whole, on every process. With several
    processes (aci_jax.distributed) `devices` span them all: each process runs its devices' share."""

    def __init__(self, devices: Sequence[jax.Device]):
        self.devices = list(devices)
        self.n = len(self.devices)
        self.mesh = Mesh(np.array(self.devices), ("pop",)) if self.n > 1 else None
        self.processes = len({d.process_index for d in self.devices})

    def program(self, fn: Callable, in_axes=0) -> Callable:
        """`jit(vmap(fn, in_axes))`, split over the devices; arguments with in_axes None (a tuple per
        argument) are the same for every individual and replicated."""
        if self.mesh is None:
            return jax.jit(jax.vmap(fn, in_axes=in_axes))
        pop = PartitionSpec("pop")
        specs = pop if not isinstance(in_axes, tuple) else tuple(pop if a == 0 else PartitionSpec() for a in in_axes)
        return jax.jit(jax.shard_map(jax.vmap(fn, in_axes=in_axes), mesh=self.mesh, in_specs=specs, out_specs=pop,
                                     check_vma=False))

    def segment_program(self, trainer: "PopulationTrainer") -> Callable:
        """`run(member, length)`: one compiled program for every segment length (`PopulationTrainer.segment`)."""
        prog = self.program(lambda m, n: trainer.segment(m, trainer.program_length, n), in_axes=(0, None))

        def run(member, length):
            n = np.int32(length)
            if self.mesh is not None:  # replicated on every device of every process (a global array)
                n = jax.make_array_from_callback((), NamedSharding(self.mesh, PartitionSpec()), lambda idx: n)
            return prog(member, n)

        return run

    def put(self, tree):
        if self.mesh is None:
            return tree
        sharding = NamedSharding(self.mesh, PartitionSpec("pop"))
        if self.processes == 1:
            return jax.device_put(tree, sharding)

        def one(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

        return jax.tree.map(one, tree)

    def get(self, tree):
        """Host numpy of a program's results (each process's share gathered to all)."""
        if self.processes == 1:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    def padded(self, size: int) -> int:
        """The smallest multiple of the device count >= size."""
        return -(-size // self.n) * self.n


def local_devices(spec) -> list[jax.Device]:
    """`evo.devices`: 'all' devices of the default backend, or the first N of them; with several
    processes (aci_jax.distributed) every process's devices: all, or the first N of each."""
    if jax.process_count() > 1:
        return _every_process_devices(spec)
    devs = jax.local_devices()
    if spec == "all":
        return devs
    if int(spec) > len(devs):
        raise ValueError(f"evo.devices={spec}: only {len(devs)} local device(s) ({devs[0].platform}); "
                         "valid: 'all' or a number up to that")
    return devs[:int(spec)]


def _every_process_devices(spec) -> list[jax.Device]:
    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())]
    if spec == "all":
        return [d for devs in by_process for d in devs]
    fewest = min(len(devs) for devs in by_process)
    if int(spec) > fewest:
        raise ValueError(f"evo.devices={spec}: a process of this run has only {fewest} local device(s) "
                         f"({jax.devices()[0].platform}); use 'all' or a number up to that (per process)")
    return [d for devs in by_process for d in devs[:int(spec)]]
