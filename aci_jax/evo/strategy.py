"""evosax strategies by name, maximising fitness, with ACI's warm start and feasible sampling.

`Strategy(genome, evo_cfg)` wraps one evosax algorithm (`STRATEGIES`, its `Params` fields overridable
by `evo.strategy_params`) with explicit state, evosax-style:
- `init(key) -> EvoState`: the algorithm's state around the initial condition's genome;
- `ask(key, state) -> (raw (P, n_genes), eyes, feasible, reasons-mask, state)`: a generation — uniform
  random genomes during the warm start, the algorithm's samples after it; infeasible genomes are
  redrawn up to `evo.max_resamples` times (`evo.infeasible: resample`);
- `tell(key, raw, fitness, state) -> (state, metrics)`: fitness is maximised (evosax minimises, so
  it is told the negative). At the end of the warm start the algorithm restarts from the best genome.
All pure functions of arrays: the state checkpoints with orbax, and a resumed run asks again exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import CMA_ES, Open_ES, Sep_CMA_ES, SimpleGA
from flax import struct

from aci_jax.evo.genome import Genome


def warm_generations(evo) -> int:
    """Generations of ACI's warm start (random search): `evo.warm_start` of `evo.num_generations`, or
    `evo.warm_generations` when the run fixed it at its start (an extended run keeps its warm start)."""
    if evo.get("warm_generations") is not None:
        return int(evo.warm_generations)
    return int(round(float(evo.get("warm_start", 0.0)) * int(evo.num_generations)))


def _std_schedule(cls):
    return lambda pop, solution, sigma: cls(pop, solution, std_schedule=optax.constant_schedule(sigma))


# name -> (constructor(population_size, solution, sigma), Params field set to sigma or None, kind)
STRATEGIES: dict[str, tuple[Callable, str | None, str]] = {
    "cma_es": (lambda pop, sol, sigma: CMA_ES(pop, sol), "std_init", "distribution"),
    "sep_cma_es": (lambda pop, sol, sigma: Sep_CMA_ES(pop, sol), "std_init", "distribution"),
    "open_es": (lambda pop, sol, sigma: Open_ES(pop, sol, std_schedule=optax.constant_schedule(sigma),
                                               optimizer=optax.adam(0.05)), None, "distribution"),
    "simple_ga": (_std_schedule(SimpleGA), None, "population"),
}


# The smallest population each strategy works with (CMA-ES with one individual has no parents to
# recombine: its covariance update divides by zero and every genome from generation 2 on is NaN).
MIN_POPULATION = {"cma_es": 2, "sep_cma_es": 2, "open_es": 2, "simple_ga": 2}


@struct.dataclass
class EvoState:
    algo: Any  # the evosax algorithm's state
    best_raw: jax.Array  # (n_genes,) best genome so far (maximised fitness)
    best_fitness: jax.Array
    generation: jax.Array  # int32: generations told


class Strategy:
    def __init__(self, genome: Genome, evo):
        name = evo.strategy
        if name not in STRATEGIES:
            raise ValueError(f"evo.strategy={name!r}; valid: {sorted(STRATEGIES)}")
        make, sigma_field, self.kind = STRATEGIES[name]
        self.genome = genome
        self.pop_size = int(evo.population_size)
        if self.pop_size < MIN_POPULATION[name]:
            raise ValueError(f"evo.population_size={self.pop_size} is too small for evo.strategy={name!r}: "
                             f"it needs at least {MIN_POPULATION[name]}")
        self.sigma = float(evo.sigma)
        try:
            self.algo = make(self.pop_size, genome.initial(), self.sigma)
        except AssertionError as e:  # evosax checks, e.g. open_es needs an even population
            raise ValueError(f"evo.strategy={name!r} with evo.population_size={self.pop_size}: {e or 'invalid'}") from None
        params = self.algo.default_params
        extra = dict(evo.get("strategy_params") or {})
        if sigma_field is not None:
            extra.setdefault(sigma_field, self.sigma)
        valid = {f.name for f in dataclasses.fields(params)}
        unknown = set(extra) - valid
        if unknown:
            raise ValueError(f"evo.strategy_params: unknown field(s) {sorted(unknown)} of {name}; valid: {sorted(valid)}")
        bad = {k: v for k, v in extra.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if bad:
            k, v = next(iter(bad.items()))
            raise ValueError(f"evo.strategy_params.{k}={v!r} must be a number (a field of {name}'s Params)")
        self.params = params.replace(**{k: jnp.asarray(v) for k, v in extra.items()})
        self.warm = warm_generations(evo)
        self.resample = evo.get("infeasible", "resample") == "resample"
        self.max_resamples = int(evo.get("max_resamples", 20))
        self.n_genes = genome.size

    def _algo_init(self, key: jax.Array, mean: jax.Array) -> Any:
        if self.kind == "distribution":
            return self.algo.init(key, mean, self.params)
        # population-based (GA): an archive around the mean, with unknown (worst) fitness
        pop = mean + self.sigma * jax.random.normal(key, (self.pop_size, self.n_genes))
        return self.algo.init(key, pop.at[0].set(mean), jnp.full(self.pop_size, jnp.inf), self.params)

    def init(self, key: jax.Array) -> EvoState:
        x0 = self.genome.initial()
        return EvoState(self._algo_init(key, x0), x0, jnp.float32(-jnp.inf), jnp.int32(0))

    def _sample(self, key: jax.Array, state: EvoState) -> tuple[jax.Array, Any]:
        def warm(key):
            return jax.random.uniform(key, (self.pop_size, self.n_genes)), state.algo

        def algo(key):
            return self.algo.ask(key, state.algo, self.params)

        if self.warm == 0:
            return algo(key)
        # ask() may update the algorithm's state (CMA: its eigendecomposition), so branch by lax.cond
        return jax.lax.cond(state.generation < self.warm, warm, algo, key)

    def ask(self, key: jax.Array, state: EvoState):
        """(raw genomes, decoded eyes, feasible (P,), violated (P, n_constraints), state)."""
        keys = jax.random.split(key, self.max_resamples + 1)
        raw, algo_state = self._sample(keys[0], state)
        check = jax.vmap(lambda r: self.genome.feasible(self.genome.decode(r)))
        if self.resample:
            def redraw(i, raw):
                ok, _ = check(raw)
                new, _ = self._sample(keys[i], state)
                return jnp.where(ok[:, None], raw, new)

            raw = jax.lax.fori_loop(1, self.max_resamples + 1, redraw, raw)
        ok, bad = check(raw)
        return raw, jax.vmap(self.genome.decode)(raw), ok, bad, state.replace(algo=algo_state)

    def tell(self, key: jax.Array, raw: jax.Array, fitness: jax.Array, state: EvoState):
        """Update with maximised fitness (NaN: worst). Returns (state, metrics)."""
        fit = jnp.where(jnp.isfinite(fitness), fitness, -jnp.inf)
        i = jnp.argmax(fit)
        better = fit[i] > state.best_fitness
        best_raw = jnp.where(better, raw[i], state.best_raw)
        best_fit = jnp.where(better, fit[i], state.best_fitness)
        gen = state.generation

        def told(_):
            algo_state, _ = self.algo.tell(key, raw, jnp.where(jnp.isfinite(fit), -fit, 1e30), state.algo, self.params)
            return algo_state

        def warm(_):  # random search: the algorithm waits; at the end it restarts from the best
            return jax.lax.cond(gen + 1 == self.warm, lambda: self._algo_init(key, best_raw), lambda: state.algo)

        algo_state = told(None) if self.warm == 0 else jax.lax.cond(gen < self.warm, warm, told, None)
        state = EvoState(algo_state, best_raw, best_fit, gen + 1)
        return state, {"best_fitness_so_far": best_fit, "sigma": self._sigma(algo_state)}

    def _sigma(self, algo_state) -> jax.Array:
        std = getattr(algo_state, "std", None)
        return jnp.mean(jnp.asarray(std, jnp.float32)) if std is not None else jnp.float32(jnp.nan)
