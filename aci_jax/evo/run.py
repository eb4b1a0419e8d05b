"""`evolve(cfg, run_dir)`: an eye evolution in one run folder, resumable at any moment.

Per generation g: the strategy asks for a population (keys derived from (seed, g), so asking again
after a restart gives the same genomes); feasible individuals train together (`PopulationTrainer`,
vmapped, in sub-batches of `evo.sub_batch`, segments of `train.eval_every` iterations driven from
Python with a progress line after each); infeasible ones get `evo.penalty_fitness`; the strategy is
told; records are appended; the strategy state is checkpointed (orbax, `evolution/<g+1>`). Within
a generation the population's training state is checkpointed every `evo.checkpoint_every` segments
(`generation/<segment>`), so a killed run loses at most that. Rerunning the same command resumes
("resuming generation g, segment s"); a larger `evo.num_generations` extends a finished run.

Run folder (besides aci_jax.runs' files): `population.csv` (one row per individual), `generations.jsonl`
(per generation), `training.jsonl` (per segment: each individual's training and evaluation),
`best/` (the best individual so far: `best.json` with its eyes and fitness, orbax params, and its
evaluation video with its eye mosaic in `videos/`), `plots/`.

Several processes (aci_jax.distributed: several GPUs or nodes under Slurm) run one evolution: every
process asks the strategy (the same keys: the same population), trains its devices' share of each
sub-batch, gathers the results and tells the strategy identically; process 0 alone opens and writes
the run folder. On resume process 0 reads the checkpoints and broadcasts them (one reader: a damaged
checkpoint is moved aside by one process, and the others need not see the run folder's disk).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from aci_jax import distributed
from aci_jax.config import ConfigError, trainable_agents
from aci_jax.evo.genome import Genome, as_config, genome_from_config, pixels, static_maxima
from aci_jax.evo.population import OverDevices, PopulationTrainer, local_devices
from aci_jax.evo.strategy import EvoState, Strategy
from aci_jax.rl import checkpoint
from aci_jax.rl.built import build
from aci_jax.rl.evaluation import selection_key
from aci_jax.rl.fitness import synthetic_fitness
from aci_jax.runs import json_number, RunError, RunFolder, append_jsonl, atomic_write, located, read_jsonl, rewrite_jsonl

EYE_FIELDS = ("num_eyes", "resolution", "fov", "lat_range", "lon_range")
# Per individual: the best periodic evaluation (selection_*, picked on its own episodes) and the final
# evaluation of those parameters on fresh episodes (final_*; empty without one). `fitness` in the
# records is what the strategy was told (`evo.fitness`: final or selection; a floor when not trained).
REPORTED = ("selection_fitness", "selection_success", "selection_return", "final_fitness", "final_success",
            "final_return")


def _empty_results(pop: int) -> dict:
    """A generation's per-individual results before training (NaN: not evaluated)."""
    res = {k: np.full(pop, np.nan) for k in ("fitness", *REPORTED)}
    res.update(best_step=np.zeros(pop, np.int64), env_steps=np.zeros(pop, np.int64), diverged=np.zeros(pop, bool))
    return res


def genome_of(cfg: DictConfig) -> Genome:
    agent = trainable_agents(cfg.env)[0]
    try:
        return genome_from_config(cfg.evo, cfg.env.agents[agent].eyes, int(cfg.env.frame_stack))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def population_config(cfg: DictConfig, genome: Genome) -> DictConfig:
    """The config every individual trains with: the exp's, with static maxima that hold every feasible
    individual (from the gene bounds and the pixel budget) unless set explicitly, in the packed pixel
    layout: each individual renders, observes and encodes `max_pixels` pixel slots (ACI's budget:
    50), whatever its eyes' layout. So every individual costs the budget (a 1-pixel eye casts as many
    rays as a 50-pixel one, and the ray walk runs until the batch's last ray ends), not the product
    of the maxima (max_eyes × width × height): cost follows the budget, not each one's own pixels."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    m = static_maxima(genome)
    r = cfg.env.render
    # the optics eye convolves eye images: it needs the buffer layout (max_eyes × height × width)
    keys = ("max_eyes", "max_resolution", "max_width", "max_height") + (() if genome.base.optics is not None
                                                                        else ("max_pixels",))
    for key in keys:
        if r.get(key) is None:
            r[key] = m[key]
        if "eval_env" in cfg and "render" in cfg.eval_env and cfg.eval_env.render.get(key) is None:
            cfg.eval_env.render[key] = r[key]
    if "frame_stack" in m:
        cfg.env.frame_stack = m["frame_stack"]
    if "policy_width" in m:
        cfg.trainer.network.hidden = [m["policy_width"]] * len(cfg.trainer.network.hidden)
    return cfg


def individual_config(pop_cfg: DictConfig, eyes_cfg: dict, seed: int) -> DictConfig:
    """The `aci_jax.train` config of one individual (its eyes and seed in the population's config):
    training it solo gives the individual's parameters and fitness."""
    cfg = OmegaConf.create(OmegaConf.to_container(pop_cfg, resolve=True))
    agent = trainable_agents(cfg.env)[0]
    for section in ("env", "eval_env"):
        if section in cfg and "agents" in cfg[section] and agent in cfg[section].agents:
            old = OmegaConf.to_container(cfg[section].agents[agent].eyes)
            new = {**old, **eyes_cfg}
            if "optics" in eyes_cfg and old.get("optics"):
                new["optics"] = {**old["optics"], **eyes_cfg["optics"]}
            cfg[section].agents[agent].eyes = new
    cfg.seed = int(seed)
    return cfg


def individual_seed(seed: int, generation: int, index: int) -> int:
    """The training seed of individual `index` of generation `generation` (as ACI: from both)."""
    return int(np.random.SeedSequence([int(seed), generation, index]).generate_state(1)[0] % (2**31 - 1))


@dataclasses.dataclass
class Evolution:
    """The built pieces of an evolution config."""

    cfg: DictConfig  # the population's config (static maxima filled in)
    genome: Genome
    strategy: Strategy
    trainer: PopulationTrainer | None  # None in test mode
    built: Any  # aci_jax.train.Built (PPO, eval env, recorder) or None in test mode

    @property
    def test_mode(self) -> bool:
        return self.trainer is None


def build_evolution(cfg: DictConfig) -> Evolution:
    genome = genome_of(cfg)
    try:
        strategy = Strategy(genome, cfg.evo)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    pop_cfg = population_config(cfg, genome)
    if pop_cfg.trainer.get("mode", "ppo") == "test":
        return Evolution(pop_cfg, genome, strategy, None, None)
    b = build(pop_cfg)
    t = pop_cfg.train
    trainer = PopulationTrainer(b.ppo, b.eval_env, int(t.get("eval_envs") or pop_cfg.env.n_envs),
                                int(t.get("eval_every") or 0), t.get("early_stop"), b.final_rounds)
    return Evolution(pop_cfg, genome, strategy, trainer, b)


def evolve(cfg: DictConfig, run_dir: str | Path, stop_after: int | None = None, deadline: float | None = None) -> dict:
    """Evolve (or resume) in `run_dir`; stop after `stop_after` training segments of this call
    (tests of resume), or at the first segment boundary after `deadline` (`time.time()`; a time
    budget, e.g. benchmarks/gpu_check.py's): what was done is checkpointed, the same call resumes.
    Returns {'generations' (done in this call), 'best' (best.json's content), 'stopped' (early)}."""
    distributed.on_writer(lambda: _refuse_shrinking(cfg, Path(run_dir)))
    folder = distributed.on_writer(lambda: RunFolder.open(run_dir, cfg, "evo"))
    try:
        run_cfg = folder.cfg if folder is not None else located(cfg, Path(run_dir))
        run_cfg = _fixed_warm_start(run_cfg, Path(run_dir))
        return _Loop(build_evolution(run_cfg), Path(run_dir), run_cfg, stop_after, deadline).run()
    finally:
        if folder is not None:
            folder.close()


def _refuse_shrinking(cfg: DictConfig, run_dir: Path) -> None:
    """evo.num_generations below the generations a run already holds: refused before config.yaml is
    touched (a larger value extends the run)."""
    held = len(read_jsonl(run_dir / "generations.jsonl")) if (run_dir / "config.yaml").is_file() else 0
    if held > int(cfg.evo.num_generations):
        raise ConfigError(f"evo.num_generations={int(cfg.evo.num_generations)} is below the {held} generations "
                          f"run_dir={str(run_dir)!r} holds; valid: >= {held} (a larger value extends it)")


def _fixed_warm_start(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run's warm-start length, fixed when it started (`warm_start.json`): extending a finished
    run (a larger evo.num_generations) continues the strategy instead of recomputing the warm start
    from the new length and going back to random search."""
    from aci_jax.evo.strategy import warm_generations

    path = run_dir / "warm_start.json"

    def read_or_fix() -> int:
        if path.is_file():
            return int(json.loads(path.read_text())["generations"])
        n = warm_generations(cfg.evo)
        atomic_write(path, json.dumps({"generations": n, "warm_start": float(cfg.evo.get("warm_start", 0.0)),
                                       "num_generations_at_start": int(cfg.evo.num_generations)}))
        return n

    n = int(distributed.share(np.int32(distributed.on_writer(read_or_fix) or 0)))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.evo.warm_generations = n
    return cfg


class _Stop(Exception):
    pass


class _Loop:
    def __init__(self, evo: Evolution, run_dir: Path, user_cfg: DictConfig, stop_after: int | None,
                 deadline: float | None = None):
        self.evo, self.dir, self.stop_after, self.deadline = evo, run_dir, stop_after, deadline
        self.cfg = evo.cfg
        self.user_cfg = user_cfg
        self.segments_done = 0
        self.writer = distributed.is_writer()
        self.pop = int(self.cfg.evo.population_size)
        self.n_gen = int(self.cfg.evo.num_generations)
        try:
            self.devices = OverDevices(local_devices(self.cfg.evo.get("devices", "all")))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.sub = self.devices.padded(int(self.cfg.evo.get("sub_batch") or self.pop))
        self.key = jax.random.PRNGKey(int(self.cfg.seed))
        s = evo.strategy
        self.ask = jax.jit(s.ask)
        self.tell = jax.jit(s.tell)
        if evo.trainer is not None:
            tr = evo.trainer
            self.init = self.devices.program(tr.init)
            self.segment = self.devices.segment_program(tr)  # one program for every segment length
            self.final = self.devices.program(tr.final) if tr.final_rounds else None
        self.told = str(self.cfg.evo.get("fitness", "final")) if not evo.test_mode else "selection"
        self.t0 = time.perf_counter()
        self.steps_run = 0
        if not evo.test_mode:
            d = self.devices.devices
            print(f"[evo] sub-batches of {self.sub} individuals on {len(d)} {d[0].platform} device(s)", flush=True)

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> dict:
        state, g0 = self._restore_evolution()
        distributed.on_writer(lambda: self._check_records(g0))
        distributed.on_writer(lambda: self._truncate_records(g0))
        if g0 >= self.n_gen and self.writer:
            print(f"[evo] finished: {g0} generations (raise evo.num_generations to extend)")
        elif g0 > 0 and self.writer:
            print(f"[evo] resuming at generation {g0 + 1}/{self.n_gen} ({g0} done)", flush=True)
        done, stopped = 0, False
        try:
            for g in range(g0, self.n_gen):
                if self.deadline is not None and time.time() >= self.deadline:
                    raise _Stop
                state = self._generation(g, state)
                done += 1
        except _Stop:
            stopped = True
        best = distributed.on_writer(lambda: self._finish(done or g0 >= self.n_gen))
        print(f"[evo] {done} generations in {time.perf_counter() - self.t0:.1f} s; run folder {self.dir}")
        return {"generations": done, "best": best, "state": state, "stopped": stopped,
                "warm_generations": self.evo.strategy.warm}

    def _check_records(self, g0: int) -> None:
        """Generations checkpointed but their records gone: refused, never restarted silently."""
        if g0 == 0:
            return
        missing = [n for n in ("population.csv", "generations.jsonl") if not (self.dir / n).is_file()]
        if missing:
            raise ConfigError(f"run_dir={str(self.dir)!r} holds {g0} generation(s) in evolution/ but not "
                              f"{', '.join(missing)}: put the file(s) back (a copy of the run folder), or pass another "
                              f"run_dir for a new run")
        held = len(read_jsonl(self.dir / "generations.jsonl"))
        if held < g0:
            raise ConfigError(f"{self.dir / 'generations.jsonl'} holds {held} generation(s), the checkpoint {g0}: "
                              f"the records were cut; put the file back or pass another run_dir")

    def _restore_evolution(self) -> tuple[EvoState, int]:
        """(strategy state, generations done) from `evolution/`: read by process 0, shared."""
        state = self.evo.strategy.init(jax.random.fold_in(self.key, 10**6))
        found = distributed.on_writer(lambda: checkpoint.restore_newest(self.dir / "evolution", {"state": state}))
        head = distributed.share(np.array([found is not None, found[1] if found else 0], np.int32))
        if not head[0]:
            return state, 0
        return distributed.share(found[0]["state"] if self.writer else state), int(head[1])

    def _finish(self, plot: bool) -> dict | None:
        path = self.dir / "best" / "best.json"
        best = json.loads(path.read_text()) if path.exists() else None
        if plot:
            from aci_jax.evo.plots import plot_run

            plot_run(self.dir)
        return best

    def _generation(self, g: int, state: EvoState) -> EvoState:
        k_ask, k_tell = jax.random.split(jax.random.fold_in(self.key, g))
        raw, eyes, ok, bad, asked = self.ask(k_ask, state)
        if not np.all(np.isfinite(np.asarray(raw))):
            raise RunError(f"generation {g + 1}: evo.strategy={self.cfg.evo.strategy!r} proposed non-finite genomes "
                           f"(NaN/inf in {int((~np.isfinite(np.asarray(raw))).any(-1).sum())} of {self.pop}); nothing "
                           f"of this generation was recorded. Its state is in {self.dir / 'evolution'}: try another "
                           f"evo.sigma or evo.strategy_params in a new run_dir")
        ok_np = np.asarray(ok)
        seeds = np.array([individual_seed(int(self.cfg.seed), g, i) for i in range(self.pop)], np.int32)
        t_gen = time.perf_counter()
        if self.evo.test_mode:
            res = _empty_results(self.pop)
            res["fitness"] = res["selection_fitness"] = np.asarray(jax.vmap(synthetic_fitness)(eyes), np.float64)
            best_params = None
            res["fitness"][~ok_np] = np.nan
        else:
            res, best_params = self._train(g, eyes, ok_np, seeds)
        fitness = res["fitness"].copy()
        trained = ok_np & np.isfinite(fitness)
        floor = float(self.cfg.evo.penalty_fitness)
        if trained.any():
            floor = min(floor, float(np.min(fitness[trained])) - 1.0)
        fitness[~trained] = floor
        state, tm = self.tell(k_tell, raw, jnp.asarray(fitness, jnp.float32), asked)
        wall = time.perf_counter() - t_gen

        def write():
            self._record(g, raw, eyes, ok_np, np.asarray(bad), seeds, res, fitness, trained, tm, wall)
            self._keep_best(g, eyes, seeds, fitness, trained, res, best_params)
            checkpoint.save(checkpoint.manager(self.dir / "evolution", 2), g + 1, {"state": jax.device_get(state)})
            shutil.rmtree(self.dir / "generation", ignore_errors=True)

        distributed.on_writer(write)
        return state

    # -- training ----------------------------------------------------------------------------------

    def _train(self, g: int, eyes, ok: np.ndarray, seeds: np.ndarray):
        """Train the feasible individuals in sub-batches; per-individual results and the params of
        the generation's best."""
        idx = np.flatnonzero(ok)
        n = len(idx)
        res = _empty_results(self.pop)
        lengths = self.evo.trainer.lengths
        gen_best = {"fitness": -math.inf, "params": None, "index": -1}
        resume = self._restore_generation(g)
        batches = [idx[i:i + self.sub] for i in range(0, n, self.sub)]
        for b, members_idx in enumerate(batches):
            size = len(members_idx)
            # padded to the sub-batch size with copies of its last member: one compiled program
            pad = np.concatenate([members_idx, np.repeat(members_idx[-1:], self.sub - size)])
            m_eyes = jax.tree.map(lambda x: x[jnp.asarray(pad)], eyes)
            s0, member = 0, None
            if resume is not None and b < resume["batch"]:
                continue
            if resume is not None:
                res, gen_best, member, s0 = resume["res"], resume["gen_best"], resume["member"], resume["segment"]
                print(f"[evo] resuming generation {g + 1}, sub-batch {b + 1}/{len(batches)}, segment "
                      f"{s0 if member is not None else 0}/{len(lengths)}", flush=True)
                s0 = s0 if member is not None else 0
                resume = None
            if member is None:
                member = self.init(*self.devices.put((jnp.asarray(seeds[pad]), m_eyes)))
            else:
                member = self.devices.put(member)
            for s in range(s0, len(lengths)):
                if self.stop_after is not None and self.segments_done >= self.stop_after:
                    raise _Stop
                if self.deadline is not None and time.time() >= self.deadline and s > s0:  # one process only
                    if s % int(self.cfg.evo.checkpoint_every):  # not checkpointed after segment s yet
                        self._save_generation(g, b, s, member, res, gen_best)
                    raise _Stop
                t = time.perf_counter()
                member, metrics = self.segment(member, lengths[s])
                metrics = self.devices.get(metrics)
                dt = time.perf_counter() - t
                self.segments_done += 1
                steps = lengths[s] * self.evo.trainer.ppo.batch_size * len(pad)
                self.steps_run += steps
                row = {"generation": g, "sub_batch": b, "segment": s + 1, "individuals": [int(i) for i in members_idx],
                       **{k: [json_number(v) for v in np.asarray(metrics[k])[:size]] for k in metrics}}
                distributed.on_writer(lambda: (append_jsonl(self.dir / "training.jsonl", row), self._progress(
                    g, b, len(batches), s + 1, len(lengths), size, steps / dt)))
                if (s + 1) % int(self.cfg.evo.checkpoint_every) == 0 and s + 1 < len(lengths):
                    self._save_generation(g, b, s + 1, member, res, gen_best)
            final = self._final(member)
            m = self.devices.get(member)
            finite = lambda x: float(x) if np.isfinite(x) else np.nan
            for j, i in enumerate(members_idx):
                res["selection_fitness"][i] = finite(m.best_fitness[j])
                res["selection_success"][i] = float(m.best_success[j])
                res["selection_return"][i] = float(m.best_mean[j])
                for k in final:
                    res[k][i] = finite(final[k][j])
                res["fitness"][i] = res[f"{self.told}_fitness"][i]
                res["best_step"][i] = int(m.best_step[j])
                res["env_steps"][i] = int(m.ts.env_steps[j])
                res["diverged"][i] = bool(m.diverged[j])
            told = res["fitness"][members_idx]
            j = int(np.argmax(np.where(np.isfinite(told), told, -np.inf)))
            if np.isfinite(told[j]) and told[j] > gen_best["fitness"]:
                gen_best = {"fitness": float(told[j]), "index": int(members_idx[j]),
                            "params": jax.tree.map(lambda x: np.asarray(x[j]), m.best_params)}
            if b + 1 < len(batches):
                self._save_generation(g, b + 1, 0, None, res, gen_best)
        return res, gen_best

    def _final(self, member) -> dict:
        """The sub-batch's final evaluation on fresh episodes ({} without one), timed."""
        if self.final is None:
            return {}
        t = time.perf_counter()
        out = {k: np.asarray(v) for k, v in self.devices.get(self.final(member)).items()}
        if self.writer:
            print(f"[evo] final evaluation on fresh episodes: {time.perf_counter() - t:.1f} s", flush=True)
        return out

    def _save_generation(self, g, b, s, member, res, gen_best) -> None:
        member = None if member is None else self.devices.get(member)  # every process: a collective
        distributed.on_writer(lambda: self._write_generation(g, b, s, member, res, gen_best))

    def _write_generation(self, g, b, s, member, res, gen_best) -> None:
        state = {"meta": np.array([g, b, s], np.int64), "member": member,
                 "res": {k: np.asarray(v, np.float64) for k, v in res.items()},
                 "gen_best": {"fitness": np.array(gen_best["fitness"], np.float64),
                              "index": np.array(gen_best["index"], np.int64),
                              "params": gen_best["params"]}}
        mngr = checkpoint.manager(self.dir / "generation", 2)
        step = (b + 1) * 100000 + s
        checkpoint.save(mngr, step, state)
        mngr.close()
        atomic_write(self.dir / "generation" / "structure.json", json.dumps(
            {"generation": g, "batch": b, "segment": s, "has_member": member is not None,
             "has_best": gen_best["params"] is not None, "sub_batch": self.sub}))

    def _restore_generation(self, g: int) -> dict | None:
        """Generation g's checkpoint (`generation/`), read by process 0 and shared; None: none."""
        meta = distributed.on_writer(lambda: self._generation_meta(g))
        head = distributed.share(np.array([meta is not None, bool(meta and meta["has_member"]),
                                           bool(meta and meta["has_best"])], np.int32))
        if not head[0]:
            return None
        like = self._generation_like(bool(head[1]), bool(head[2]))

        def read():
            found = checkpoint.restore_newest(self.dir / "generation", like)
            return found[0] if found is not None and int(found[0]["meta"][0]) == g else None

        st = distributed.on_writer(read)
        if not distributed.share(np.int32(st is not None)):
            return None
        st = distributed.share(st if self.writer else like)
        gg, b, s = (int(x) for x in st["meta"])
        res = {k: np.asarray(v) for k, v in st["res"].items()}
        res["best_step"] = res["best_step"].astype(np.int64)
        res["env_steps"] = res["env_steps"].astype(np.int64)
        res["diverged"] = res["diverged"].astype(bool)
        gb = st["gen_best"]
        return {"batch": b, "segment": s, "member": st["member"], "res": res,
                "gen_best": {"fitness": float(gb["fitness"]), "index": int(gb["index"]), "params": gb["params"]}}

    def _generation_meta(self, g: int) -> dict | None:
        """structure.json of a checkpoint of generation g this run can resume, else None."""
        info = self.dir / "generation" / "structure.json"
        if not info.exists():
            return None
        meta = json.loads(info.read_text())
        if meta["generation"] != g:
            return None
        if meta["has_member"] and meta.get("sub_batch", self.sub) != self.sub:
            print(f"[evo] the generation checkpoint holds sub-batches of {meta['sub_batch']}, this run trains "
                  f"{self.sub} (evo.devices or evo.sub_batch changed): generation {g + 1} restarts", flush=True)
            return None
        return meta

    def _generation_like(self, has_member: bool, has_best: bool) -> dict:
        """Zeros shaped as a generation checkpoint (what orbax restores into; what a broadcast fills)."""
        tr = self.evo.trainer
        like_member = None
        if has_member:
            eyes = jax.tree.map(lambda x: jnp.stack([x] * self.sub), self.evo.genome.base)
            like_member = jax.eval_shape(jax.vmap(tr.init), jnp.zeros(self.sub, jnp.int32), eyes)
            like_member = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like_member)
        like_params = None
        if has_best:
            p = jax.eval_shape(tr.ppo.init, jax.random.PRNGKey(0), self.evo.genome.base).params
            like_params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), p)
        return {"meta": np.zeros(3, np.int64), "member": like_member,
                "res": {k: np.zeros(self.pop, np.float64) for k in _empty_results(self.pop)},
                "gen_best": {"fitness": np.array(0.0), "index": np.array(0), "params": like_params}}

    # -- records -----------------------------------------------------------------------------------

    def _progress(self, g, b, nb, s, ns, size, rate) -> None:
        rows = read_jsonl(self.dir / "generations.jsonl")
        best = max((r["best_fitness"] for r in rows), default=None)
        med = rows[-1]["median_fitness"] if rows else None
        elapsed = time.perf_counter() - self.t0
        frac = ((g - self._g_start()) + ((b + s / ns) / nb)) / max(self.n_gen - self._g_start(), 1)
        eta = elapsed / max(frac, 1e-9) - elapsed if frac > 0 else float("nan")
        f = lambda v: "  n/a" if v is None else f"{v:.3f}"
        print(f"[evo] gen {g + 1}/{self.n_gen} | sub-batch {b + 1}/{nb} ({size} individuals) | segment {s}/{ns} | "
              f"{rate:,.0f} env-steps/s | best {f(best)} | last gen median {f(med)} | "
              f"ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta, 0))) if math.isfinite(eta) else 'n/a'}",
              flush=True)

    def _g_start(self) -> int:
        if not hasattr(self, "_g0"):
            self._g0 = len(read_jsonl(self.dir / "generations.jsonl"))
        return self._g0

    def _truncate_records(self, g0: int) -> None:
        """Drop rows written by a killed run after its last checkpoint: of generations >= g0, except
        the training rows of generation g0 its mid-generation checkpoint (if any) already holds."""
        meta = self._generation_meta(g0)
        held = (meta["batch"], meta["segment"]) if meta is not None else (-1, 0)
        kept = {"generations.jsonl": lambda r: r["generation"] < g0,
                "training.jsonl": lambda r: r["generation"] < g0 or (
                    r["generation"] == g0 and (r["sub_batch"], r["segment"]) <= held)}
        for name, keeps in kept.items():
            p = self.dir / name
            rows = read_jsonl(p)
            keep = [r for r in rows if keeps(r)]
            if len(keep) != len(rows) or (p.exists() and p.stat().st_size and not p.read_text().endswith("\n")):
                rewrite_jsonl(p, keep)
        p = self.dir / "population.csv"
        if p.exists():
            rows = read_population(p)
            keep = [r for r in rows if int(r["generation"]) < g0]
            fields = list(rows[0].keys()) if rows else next(csv.reader([p.read_text().split("\n", 1)[0]]), None)
            if _csv_text(keep, fields) != p.read_text():  # rows of a killed run, or a torn last line
                _write_csv(p, keep, fields)

    def _record(self, g, raw, eyes, ok, bad, seeds, res, fitness, trained, tm, wall) -> None:
        genome = self.evo.genome
        vals = np.asarray(genome.values(raw))
        raw = np.asarray(raw)
        e = jax.device_get(eyes)
        order = np.argsort(-fitness, kind="stable")
        rank = np.empty(self.pop, int)
        rank[order] = np.arange(1, self.pop + 1)
        rows = []
        for i in range(self.pop):
            row = {"generation": g, "individual": i, "rank": int(rank[i])}
            row.update({f"raw_{n}": float(raw[i, k]) for k, n in enumerate(genome.names)})
            row.update({f"gene_{n}": json_number(vals[i, k]) for k, n in enumerate(genome.names)})
            one = jax.tree.map(lambda x: x[i], e)
            row.update({k: " ".join(f"{v:g}" for v in np.atleast_1d(np.asarray(getattr(one, k)))) for k in EYE_FIELDS})
            row.update(pixels=int(pixels(one)), feasible=bool(ok[i]), reason=genome.reasons(bad[i]),
                       trained=bool(trained[i]), fitness=float(fitness[i]),
                       **{k: json_number(res[k][i]) for k in REPORTED},
                       best_step=int(res["best_step"][i]), env_steps=int(res["env_steps"][i]),
                       diverged=bool(res["diverged"][i]), seed=int(seeds[i]))
            rows.append(row)
        p = self.dir / "population.csv"
        old = read_population(p) if p.exists() else []
        _write_csv(p, old + rows, list(rows[0].keys()))
        f = fitness[trained]
        best_i = int(order[0])
        summary = {"generation": g, "best_fitness": float(fitness[best_i]),
                   "median_fitness": float(np.median(f)) if f.size else None,
                   "mean_fitness": float(np.mean(f)) if f.size else None,
                   "best_fitness_so_far": float(tm["best_fitness_so_far"]), "sigma": json_number(tm["sigma"]),
                   "feasible": int(ok.sum()), "trained": int(trained.sum()), "diverged": int(res["diverged"].sum()),
                   "env_steps": int(res["env_steps"].sum()), "wall_s": wall,
                   "env_steps_per_s": float(res["env_steps"].sum() / wall) if wall > 0 else None,
                   "best": {n: json_number(vals[best_i, k]) for k, n in enumerate(genome.names)}}
        append_jsonl(self.dir / "generations.jsonl", summary)
        print(f"[evo] generation {g + 1}/{self.n_gen} done: best {summary['best_fitness']:.3f}, median "
              f"{summary['median_fitness'] if summary['median_fitness'] is None else round(summary['median_fitness'], 3)}, "
              f"{summary['trained']}/{self.pop} trained, best genes {summary['best']}, {wall:.1f} s", flush=True)

    def _keep_best(self, g, eyes, seeds, fitness, trained, res, best_params) -> None:
        if not trained.any():
            return
        i = int(np.argmax(np.where(trained, fitness, -np.inf)))
        path = self.dir / "best" / "best.json"
        old = json.loads(path.read_text()) if path.exists() else None
        if old is not None and old["fitness"] >= fitness[i]:
            return
        one = jax.tree.map(lambda x: x[i], eyes)
        info = {"generation": g, "individual": i, "fitness": float(fitness[i]), "fitness_from": self.told,
                "seed": int(seeds[i]), **{k: json_number(res[k][i]) for k in REPORTED},
                "best_step": int(res["best_step"][i]), "eyes": as_config(one)}
        path.parent.mkdir(exist_ok=True)
        if best_params is not None and best_params["params"] is not None and best_params["index"] == i:
            mngr = checkpoint.manager(self.dir / "best" / "params", 1)
            checkpoint.save(mngr, g, {"params": best_params["params"]})
            mngr.close()
            self._video(one, best_params["params"], int(seeds[i]), g)
        atomic_write(self.dir / "best" / "config.yaml", OmegaConf.to_yaml(
            individual_config(self.cfg, info["eyes"], int(seeds[i]))))
        atomic_write(path, json.dumps(info, indent=1))

    def _video(self, eyes, params, seed: int, g: int) -> None:
        from aci_jax.rl.evaluation import write_videos

        b = self.evo.built
        try:
            frames = b.record(params, eyes, selection_key(seed))
            write_videos(frames, eyes, b.eval_env, self.dir / "best" / "videos", f"gen{g}",
                         fps=int(self.cfg.rollout.fps))
        except Exception as e:  # a video is a view, never a reason to lose the run
            print(f"[evo] no video of the best individual: {type(e).__name__}: {e}")


def read_population(path: Path) -> list[dict]:
    """population.csv rows as dicts of strings. A torn last line (cut short, whether or not it ends in
    a newline) is dropped with one notice; a bad line elsewhere is a ConfigError naming file and line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]), [])
        ok = len(fields) == len(header) and fields[0].strip().lstrip("-").isdigit()
        if not ok:
            if i == len(lines):
                print(f"[evo] {path}: dropped a torn last line (line {i}; a crash or a cut copy)", flush=True)
                break
            raise ConfigError(f"{path}, line {i}: not a population row ({len(fields)} fields, expected "
                              f"{len(header)}); fix or delete that line")
        rows.append(dict(zip(header, fields)))
    return rows


def _csv_text(rows: list[dict], fields: list[str] | None) -> str:
    buf = io.StringIO()
    if fields:
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None) -> None:
    atomic_write(path, _csv_text(rows, fields))
