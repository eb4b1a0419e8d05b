"""`python -m aci_jax.train exp=detection [overrides]`: train one individual with PPO.

The run folder (`run_dir`) holds `config.yaml`; `metrics.jsonl` (one line per iteration) and
`evaluations.jsonl` (one line per evaluation on the eval env variant, every `train.eval_every`
iterations); TensorBoard events in `tb/`; `checkpoints/` (orbax, the whole TrainState every
`train.checkpoint_every` iterations and at the end) and `best/` (the parameters of the best
evaluation); and at the end `fitness.json` (the best parameters' final evaluation on fresh episodes, and their selection evaluation), `plots/` and `videos/`.
Running again with the same `run_dir` resumes from its latest checkpoint. `trainer.mode=test` skips
training and writes a synthetic fitness of the eyes (for testing evolution).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from aci_jax.config import CONFIG_DIR, ConfigError, trainable_agents
from aci_jax.eyes.geometry import EyeParams
from aci_jax.rl import checkpoint
from aci_jax.rl.built import Built, build
from aci_jax.rl.evaluation import selection_key, summarize, write_videos
from aci_jax.rl.fitness import synthetic_fitness
from aci_jax.rl.ppo import PPO, TrainState
from aci_jax.viz import save_figure
from aci_jax.runs import json_number, RunError, RunFolder, append_jsonl, atomic_write, command_errors, command_run_dir, read_jsonl, rewrite_jsonl

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


class TrainingDiverged(RunError):
    """NaN/inf in the losses or parameters; the last good checkpoint is kept."""


@jax.jit
def _finite(ts: TrainState, metrics: dict) -> jax.Array:
    leaves = jax.tree.leaves(ts.params) + [metrics[k] for k in LOSSES]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _jsonable(m: dict) -> dict:
    return {k: json_number(v) for k, v in m.items()}


class RunLog:
    """metrics.jsonl, evaluations.jsonl and TensorBoard events of a run, continued on resume.

    Rows beyond the resumed checkpoint (written after it by a killed run) are dropped, so the logs
    read as one uninterrupted run; the drop is an atomic rewrite, new rows are fsynced appends.
    """

    def __init__(self, run_dir: Path, env_steps: int):
        from tensorboardX import SummaryWriter

        self.paths = {"train": run_dir / "metrics.jsonl", "eval": run_dir / "evaluations.jsonl"}
        self.rows = {}
        for name, p in self.paths.items():
            rows = read_jsonl(p)
            self.rows[name] = [r for r in rows if r["env_steps"] <= env_steps]
            if len(self.rows[name]) != len(rows) or (p.exists() and not p.read_text().endswith("\n")
                                                     and p.stat().st_size):
                rewrite_jsonl(p, self.rows[name])
        # Events of an earlier start after the resumed checkpoint (a killed run's, or all of them
        # when it had none) are hidden from the step after the checkpoint on. A new events file per
        # start: tensorboardX names it by the second, and a second start within it would truncate it.
        tb = run_dir / "tb"
        self.tb = SummaryWriter(str(tb), purge_step=env_steps + 1 if tb.is_dir() else None,
                                filename_suffix=f".{time.time_ns()}")

    def write(self, name: str, row: dict) -> None:
        self.rows[name].append(row)
        append_jsonl(self.paths[name], row)
        for k, v in row.items():
            if k != "env_steps" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{name}/{k}", v, row["env_steps"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _start(cfg: DictConfig, ppo: PPO, run_dir: Path) -> TrainState:
    """Newest readable checkpoint of this run, else `train.model_path`, else a fresh init."""
    ts = ppo.jit_init(jax.random.PRNGKey(int(cfg.seed)))
    found = checkpoint.restore_newest(run_dir / "checkpoints", ts)
    if found is not None:
        ts, step = found
        print(f"[train] resuming from step {step:,} (iteration {int(ts.iteration)})")
    elif cfg.train.get("model_path"):
        try:
            params, step = checkpoint.load_params(cfg.train.model_path, ts.params)
        except ConfigError as e:
            raise ConfigError(f"train.model_path: {e}") from None
        ts = ts.replace(params=params)
        print(f"[train] starting from the parameters of {cfg.train.model_path} (step {step:,})")
    return ts


def _since_best(evals: list[dict]) -> tuple[float, int]:
    """(best mean eval return, evaluations since it) of an evaluation log."""
    best, since = -math.inf, 0
    for r in evals:
        best, since = (r["mean_return"], 0) if r["mean_return"] > best else (best, since + 1)
    return best, since


def _log_line(m: dict, it: int, n_it: int, rate: float, eta: float, evals: list[dict]) -> str:
    f = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    line = (f"[train] it {it}/{n_it} | steps {m['env_steps']:,} | {rate:,.0f} steps/s | return "
            f"{f(m.get('episode_return'))} | success {f(m.get('episode_success'))}")
    if evals:
        line += f" | eval return {f(evals[-1]['mean_return'])} success {f(evals[-1]['success_rate'])}"
    return line + f" | ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta, 0)))}"


def train_run(cfg: DictConfig, run_dir: str | Path, stop_after: int | None = None) -> dict:
    """Train (or resume) in `run_dir`; stop early after `stop_after` iterations of this call.
    Returns {'state', 'fitness' (None when stopped before the end), 'iterations' (done in this call)}.
    The folder is locked for the call, and a resumed run's config must agree with its config.yaml
    (`aci_jax.runs`)."""
    with RunFolder.open(run_dir, cfg, "train") as folder:
        return _train(folder.cfg, folder.path, stop_after)


def _train(cfg: DictConfig, run_dir: Path, stop_after: int | None) -> dict:
    if cfg.trainer.get("mode", "ppo") == "test":
        return test_run(cfg, run_dir)
    b = build(cfg)
    ppo, t = b.ppo, cfg.train
    ts = _start(cfg, ppo, run_dir)
    mngr = checkpoint.manager(run_dir / "checkpoints", int(t.max_to_keep))
    best_mngr = checkpoint.manager(run_dir / "best", 1)
    log = RunLog(run_dir, int(ts.env_steps))
    for step in best_mngr.all_steps():  # saved by a killed run after its last checkpoint: redone below
        if step > int(ts.env_steps):
            best_mngr.delete(step)
    n_it, every, eval_every = ppo.n_iterations, max(1, int(t.checkpoint_every)), int(t.get("eval_every") or 0)
    patience = t.get("early_stop")
    stopped = lambda: patience is not None and _since_best(log.rows["eval"])[1] >= int(patience)
    eval_key = selection_key(int(cfg.seed))
    done, t_first, t0, ok = 0, None, time.perf_counter(), False
    try:
        while int(ts.iteration) < n_it and not stopped() and (stop_after is None or done < stop_after):
            t_it = time.perf_counter()
            new, metrics = ppo.jit_iteration(ts)
            if not bool(_finite(new, metrics)):
                raise TrainingDiverged(
                    f"NaN/inf in losses or params at iteration {int(new.iteration)}; not saved, the last "
                    f"good checkpoint is in {run_dir / 'checkpoints'} (step {mngr.latest_step()})")
            ts, done = new, done + 1
            dt = time.perf_counter() - t_it
            t_first = t_first if t_first is not None else time.perf_counter()  # after the compile
            m = {**_jsonable(metrics), "env_steps_per_s": ppo.batch_size / dt, "iteration": int(ts.iteration)}
            log.write("train", m)
            it = m["iteration"]
            if eval_every and (it % eval_every == 0 or it == n_it):
                _evaluate(b, ts, eval_key, log, best_mngr)
            per_it = (time.perf_counter() - t_first) / (done - 1) if done > 1 else dt
            print(_log_line(m, it, n_it, m["env_steps_per_s"], per_it * (n_it - it), log.rows["eval"]), flush=True)
            if it % every == 0 or it == n_it or stopped():
                checkpoint.save(mngr, int(ts.env_steps), ts)
        result = {"state": ts, "iterations": done, "fitness": None}
        if int(ts.iteration) >= n_it or stopped():
            if stopped():
                print(f"[train] early stop: {patience} evaluations without improvement")
            result["fitness"] = finish(b, ts, cfg, run_dir, best_mngr, log)
        ok = True
    finally:  # after a failure (a full disk, ...) closing must not hide it: its own errors are dropped
        for close in (lambda: checkpoint.close(mngr), lambda: checkpoint.close(best_mngr), log.close):
            try:
                close()
            except Exception:
                if ok:
                    raise
    print(f"[train] {done} iterations in {time.perf_counter() - t0:.1f} s; run folder {run_dir}")
    return result


def _evaluate(b: Built, ts: TrainState, key: jax.Array, log: RunLog, best_mngr) -> None:
    """Evaluate the current parameters; keep them in `best/` when their mean return is the best yet."""
    s = summarize(b.evaluate(ts.params, ts.eyes, key), b.eval_mazes)
    best, _ = _since_best(log.rows["eval"])
    log.write("eval", {"env_steps": int(ts.env_steps), **{k: v for k, v in s.items() if k != "returns"}})
    if s["mean_return"] > best:
        checkpoint.save(best_mngr, int(ts.env_steps), {"params": ts.params})


def best_params(run_dir: Path, like: Any) -> tuple[Any, int] | None:
    """(params, env steps) of a run's best evaluation, or None when it has none yet."""
    if not checkpoint.has_steps(run_dir / "best"):
        return None
    return checkpoint.load_params(run_dir / "best", like)


def finish(b: Built, ts: TrainState, cfg: DictConfig, run_dir: Path, best_mngr, log: RunLog) -> float:
    """Fitness of the best parameters (the last ones when never evaluated), videos and plots."""
    best_mngr.wait_until_finished()
    best = best_params(run_dir, ts.params)
    params, step, which = (ts.params, int(ts.env_steps), "last") if best is None else (*best, "best")
    report = write_evaluation(b, params, ts.eyes, cfg, run_dir, step, which)
    plot_learning_curve(run_dir)
    return report["fitness"]


def write_evaluation(b: Built, params, eyes: EyeParams, cfg: DictConfig, run_dir: Path, step: int,
                     which: str, name: str = "fitness.json") -> dict:
    """Evaluate `params` (the run's `which` parameters, from env step `step`) on the selection
    episodes (the periodic evaluations' key) and, with `train.final_eval_envs` > 0, on fresh episodes
    no choice was made on; write the report `name` and one video per maze into `videos/`.

    The report's top level (fitness, rates, returns) is the final evaluation's when there is one,
    else the selection evaluation's; `selection` holds the selection evaluation's figures."""
    seed = int(cfg.seed)
    selection = summarize(b.evaluate(params, eyes, selection_key(seed)), b.eval_mazes)
    final = b.final(params, eyes, seed)
    brief = {k: v for k, v in selection.items() if k != "returns"}
    if final is None:
        report = {"params": which, "env_steps": step, "evaluation": "selection", **selection, "selection": brief}
    else:
        report = {"params": which, "env_steps": step, "evaluation": "final",
                  **summarize(final, b.eval_mazes), "selection": brief}
    atomic_write(run_dir / name, json.dumps(report, indent=1))
    videos = write_videos(b.record(params, eyes, selection_key(seed)), eyes, b.eval_env, run_dir / "videos",
                          f"{which}_{step}", fps=int(cfg.rollout.fps))
    print(f"[eval] {which} parameters (step {step:,}), {report['evaluation']} evaluation: fitness "
          f"{report['fitness']:.3f}, mean return {report['mean_return']:.3f}, success {report['success_rate']:.2f}, "
          f"failure {report['failure_rate']:.2f} over {report['episodes']} episodes (selection episodes: fitness "
          f"{brief['fitness']:.3f}, success {brief['success_rate']:.2f}); videos {[str(v) for v in videos]}")
    return report


def test_run(cfg: DictConfig, run_dir: Path) -> dict:
    """`trainer.mode=test`: the synthetic fitness of the configured eyes, without training."""
    eyes_cfg = cfg.env.agents[trainable_agents(cfg.env)[0]].eyes
    fit = float(synthetic_fitness(EyeParams.from_config(eyes_cfg)))
    atomic_write(run_dir / "fitness.json", json.dumps(
        {"fitness": fit, "mode": "test", "eyes": OmegaConf.to_container(eyes_cfg)}, indent=1))
    print(f"[train] test mode: synthetic fitness {fit:.4f}; run folder {run_dir}")
    return {"state": None, "iterations": 0, "fitness": fit}


def plot_learning_curve(run_dir: Path) -> Path:
    """plots/learning_curve.png: training and evaluation return and success rate vs env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_jsonl(run_dir / "metrics.jsonl"), read_jsonl(run_dir / "evaluations.jsonl")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (tk, ek, label) in zip(axes, [("episode_return", "mean_return", "mean return"),
                                          ("episode_success", "success_rate", "success rate")]):
        ax.plot([r["env_steps"] for r in train], [np.nan if r.get(tk) is None else r[tk] for r in train],
                ".-", ms=3, label="training episodes")
        if evals:
            ax.plot([r["env_steps"] for r in evals], [r[ek] for r in evals], "o-", label="evaluation")
        ax.set(xlabel="env steps", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, run_dir / "plots" / "learning_curve.png")


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    with command_errors("train"):
        seeds = int(cfg.train.get("seeds", 1)) > 1
        run_dir = command_run_dir(cfg, "seeds" if seeds else "train")
        if seeds:
            from aci_jax.seeds import train_seeds

            train_seeds(cfg, run_dir)
        else:
            train_run(cfg, run_dir)


if __name__ == "__main__":
    main()
