"""`python -m aci_jax.train exp=X train.seeds=N`: N seeds of one config trained as one program.

The population machinery of `aci_jax.evo` with equal eyes: seeds `seed, seed+1, …, seed+N-1` are
rows of one vmapped `PopulationTrainer` (split over `evo.devices`), so seed `seed+i` trains, is
evaluated and gets its fitness exactly as `python -m aci_jax.train seed=<seed+i>` would. Segments of
`train.eval_every` iterations are driven from Python: a progress line and a checkpoint after each,
so rerunning the command resumes where a killed run stopped.

Run folder (kind `seeds`): `config.yaml`, `seeds.jsonl` (per segment: env steps and every seed's
training and evaluation figures), `checkpoints/` (the population's state after every segment), and
at the end `seeds.csv` (per seed: fitness, success and mean return of its best parameters' final
evaluation on fresh episodes, `selection_*` of the periodic evaluation that chose them, its step), `summary.json` (mean, median, std, min, max over seeds of each),
`plots/seeds.png` (every seed's evaluation success and return against env steps, with the median),
`best/` (every seed's best parameters, stacked) and `videos/` (the median-fitness seed's best
evaluation).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from aci_jax.config import ConfigError
from aci_jax.evo.population import Member, OverDevices, PopulationTrainer, local_devices
from aci_jax.rl import checkpoint
from aci_jax.rl.built import build
from aci_jax.rl.evaluation import selection_key, write_videos
from aci_jax.viz import save_figure
from aci_jax.runs import json_number, RunFolder, append_jsonl, atomic_write, read_jsonl, rewrite_jsonl

# fitness, success, mean_return: the final evaluation on fresh episodes (train.final_eval_envs; the
# selection evaluation's when that is 0); selection_*: the best periodic evaluation, picked on its own
# episodes
STATS = ("fitness", "success", "mean_return", "selection_fitness", "selection_success", "selection_return")


def spread(values) -> dict:
    """mean, median, std, min, max of the finite values (None for each when there are none), and n."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "median": None, "std": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


def train_seeds(cfg: DictConfig, run_dir: str | Path, stop_after: int | None = None) -> dict:
    """Train (or resume) `train.seeds` seeds of `cfg` in `run_dir`; stop after `stop_after` segments
    of this call. Returns {'seeds', 'summary' (None when stopped early), 'segments' (done now)}."""
    with RunFolder.open(run_dir, cfg, "seeds") as folder:
        return _Seeds(folder.cfg, folder.path).run(stop_after)


class _Seeds:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        if cfg.trainer.get("mode", "ppo") == "test":
            raise ConfigError("train.seeds > 1 trains with PPO: trainer.mode=test has no seeds to compare")
        self.cfg, self.dir = cfg, run_dir
        self.n = int(cfg.train.seeds)
        try:
            self.devices = OverDevices(local_devices(cfg.evo.get("devices", "all")))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.size = self.devices.padded(self.n)  # padded with copies of the last seed
        self.b = build(cfg)
        t = cfg.train
        self.trainer = PopulationTrainer(self.b.ppo, self.b.eval_env, int(t.get("eval_envs") or cfg.env.n_envs),
                                         int(t.get("eval_every") or 0), t.get("early_stop"), self.b.final_rounds)
        self.seeds = np.minimum(int(cfg.seed) + np.arange(self.size), int(cfg.seed) + self.n - 1).astype(np.int32)
        self.init = self.devices.program(self.trainer.init)
        self.segment = self.devices.segment_program(self.trainer)  # one program for every segment length
        self.final = self.devices.program(self.trainer.final) if self.b.final_rounds else None

    def _eyes(self):
        return jax.tree.map(lambda x: jnp.stack([x] * self.size), self.b.ppo.env.default_eyes)

    def run(self, stop_after: int | None) -> dict:
        lengths = self.trainer.lengths
        like = jax.eval_shape(jax.vmap(self.trainer.init), jnp.asarray(self.seeds), self._eyes())
        like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
        found = checkpoint.restore_newest(self.dir / "checkpoints", {"member": like, "segment": np.array(0, np.int64)})
        if found is None:
            member, s0 = self.init(*self.devices.put((jnp.asarray(self.seeds), self._eyes()))), 0
        else:
            member, s0 = self.devices.put(found[0]["member"]), int(found[0]["segment"])
            print(f"[seeds] resuming after segment {s0}/{len(lengths)}", flush=True)
        rewrite_jsonl(self.dir / "seeds.jsonl", [r for r in read_jsonl(self.dir / "seeds.jsonl") if r["segment"] <= s0])
        print(f"[seeds] {self.n} seeds ({int(self.seeds[0])}…{int(self.seeds[self.n - 1])}) on "
              f"{self.devices.n} {self.devices.devices[0].platform} device(s); {len(lengths)} segments of "
              f"{self.trainer.ppo.batch_size:,}-step iterations", flush=True)
        mngr = checkpoint.manager(self.dir / "checkpoints", 2)
        t0, done, per_step = time.perf_counter(), 0, []
        try:
            for s in range(s0, len(lengths)):
                if stop_after is not None and done >= stop_after:
                    return {"seeds": self.n, "summary": None, "segments": done}
                t = time.perf_counter()
                member, metrics = self.segment(member, lengths[s])
                metrics = {k: np.asarray(v)[:self.n] for k, v in jax.device_get(metrics).items()}
                dt = time.perf_counter() - t
                done += 1
                append_jsonl(self.dir / "seeds.jsonl", {"segment": s + 1, "env_steps": int(metrics["env_steps"][0]),
                                                        **{k: [json_number(v) for v in metrics[k]] for k in metrics
                                                           if k != "env_steps"}})
                checkpoint.save(mngr, s + 1, {"member": member, "segment": np.array(s + 1, np.int64)})
                steps = lengths[s] * self.trainer.ppo.batch_size * self.size
                per_step.append(dt / lengths[s])
                eta = np.median(per_step[1:] or per_step) * sum(lengths[s + 1:])
                ev = spread(metrics["eval_success"])
                print(f"[seeds] segment {s + 1}/{len(lengths)} | steps {int(metrics['env_steps'][0]):,} per seed | "
                      f"{steps / dt:,.0f} steps/s | eval success median {_f(ev['median'])} "
                      f"[{_f(ev['min'])}, {_f(ev['max'])}] | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}",
                      flush=True)
        finally:
            checkpoint.close(mngr)
        final = None
        if self.final is not None:
            t = time.perf_counter()
            final = {k: np.asarray(v) for k, v in self.devices.get(self.final(member)).items()}
            print(f"[seeds] final evaluation of each seed's best parameters on fresh episodes: "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        summary = self._finish(jax.device_get(member), final)
        print(f"[seeds] {done} segments in {time.perf_counter() - t0:.1f} s; run folder {self.dir}")
        return {"seeds": self.n, "summary": summary, "segments": done}

    def _finish(self, m: Member, final: dict | None) -> dict:
        rows = []
        for i in range(self.n):
            sel = {"selection_fitness": json_number(m.best_fitness[i]), "selection_success": json_number(m.best_success[i]),
                   "selection_return": json_number(m.best_mean[i])}
            rep = ({"fitness": sel["selection_fitness"], "success": sel["selection_success"],
                    "mean_return": sel["selection_return"]} if final is None else
                   {"fitness": json_number(final["final_fitness"][i]), "success": json_number(final["final_success"][i]),
                    "mean_return": json_number(final["final_return"][i])})
            rows.append({"seed": int(self.seeds[i]), **rep, **sel, "best_step": int(m.best_step[i]),
                         "env_steps": int(m.ts.env_steps[i]), "diverged": bool(m.diverged[i])})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.dir / "seeds.csv", buf.getvalue())
        summary = {"seeds": [r["seed"] for r in rows], "evaluation": "selection" if final is None else "final",
                   **{k: spread([r[k] for r in rows]) for k in STATS}}
        atomic_write(self.dir / "summary.json", json.dumps(summary, indent=1))
        best = jax.tree.map(lambda x: np.asarray(x[:self.n]), m.best_params)
        bm = checkpoint.manager(self.dir / "best", 1)
        checkpoint.save(bm, int(np.max(m.ts.env_steps)), {"params": best})
        checkpoint.close(bm)
        plot_seeds(self.dir)
        fit = np.array([r["fitness"] if r["fitness"] is not None else -np.inf for r in rows])
        i = int(np.argsort(fit)[(self.n - 1) // 2])  # the median seed (the lower one of an even count)
        eyes = self.b.ppo.env.default_eyes
        params = jax.tree.map(lambda x: x[i], best)
        write_videos(self.b.record(params, eyes, selection_key(rows[i]["seed"])), eyes, self.b.eval_env,
                     self.dir / "videos", f"median_seed_{rows[i]['seed']}", fps=int(self.cfg.rollout.fps))
        f, s = summary["fitness"], summary["success"]
        print(f"[seeds] {self.n} seeds, {summary['evaluation']} evaluation: fitness mean {_f(f['mean'])} median {_f(f['median'])} std {_f(f['std'])} "
              f"[{_f(f['min'])}, {_f(f['max'])}]; success mean {_f(s['mean'])} median {_f(s['median'])} "
              f"std {_f(s['std'])} [{_f(s['min'])}, {_f(s['max'])}]")
        return summary


def plot_seeds(run_dir: Path) -> Path:
    """plots/seeds.png: each seed's evaluation success and return against env steps, and the median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "seeds.jsonl")
    x = [r["env_steps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (k, label) in zip(axes, [("eval_success", "evaluation success rate"), ("eval_return", "evaluation mean return")]):
        y = np.array([[np.nan if v is None else v for v in r[k]] for r in rows], np.float64)
        if len(y):
            ax.plot(x, y, color="0.6", lw=0.8, alpha=0.8)
            ax.plot(x, np.nanmedian(y, axis=1), "k-o", ms=3, label=f"median of {y.shape[1]} seeds")
            ax.legend()
        ax.set(xlabel="env steps per seed", ylabel=label)
        ax.grid(alpha=0.3)
    return save_figure(fig, run_dir / "plots" / "seeds.png")


def _f(v) -> str:
    return " n/a" if v is None else f"{v:.3f}"
