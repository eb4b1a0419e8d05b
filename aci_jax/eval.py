"""`python -m aci_jax.eval run_dir=RUN [eval.params=best|last] [eval.viewer=true] [overrides]`.

Evaluates a finished or running run (ACI's `eval.sh`): loads its best (or last) parameters, plays
the evaluation episodes on the eval env variant and writes into the run folder `eval.json` (fitness,
success and failure rates, returns), `eval_summary.txt` and one video per maze in `videos/` (bird's-eye
view beside the eye mosaic). With `eval.viewer=true` and a display, one env also plays live in
MuJoCo's viewer. Further `key=value` overrides apply on top of the run's own config.yaml.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from omegaconf import OmegaConf

from aci_jax.config import CONFIG_DIR, ConfigError, validate
from aci_jax.rl import checkpoint
from aci_jax.runs import atomic_write, command_errors
from aci_jax.train import Built, best_params, build, write_evaluation


_ABSENT = object()


def load_run_config(argv: list[str]):
    """The run's config.yaml with the default `eval` section and the command-line overrides
    (Hydra's syntax: `key=value` replaces a key of the run's config, `+key=value` adds one)."""
    cli = OmegaConf.from_dotlist([a.lstrip("+") for a in argv])
    if not cli.get("run_dir"):
        raise ConfigError("run_dir=... is required: the run folder to evaluate")
    run_dir = Path(cli.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run_dir={str(run_dir)!r} holds no config.yaml: not a run folder")
    defaults = OmegaConf.masked_copy(OmegaConf.load(CONFIG_DIR / "config.yaml"), ["eval"])
    base = OmegaConf.merge(defaults, OmegaConf.load(run_dir / "config.yaml"), {"run_dir": None})
    for key in (a.split("=", 1)[0] for a in argv if not a.startswith("+")):
        if OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"{key}: no such key in the run's config; add a new one with +{key}=...")
    cfg = OmegaConf.merge(base, cli)
    validate(cfg)
    return cfg, run_dir


def load_params(b: Built, cfg, run_dir: Path) -> tuple:
    """(params, env steps, eyes, 'best' | 'last'): the best evaluation's parameters when asked for
    and present, else the latest checkpoint's."""
    like = jax.eval_shape(b.ppo.init, jax.random.PRNGKey(0)).params
    like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
    eyes = b.ppo.env.default_eyes
    if cfg.eval.params == "best":
        best = best_params(run_dir, like)
        if best is not None:
            return *best, eyes, "best"
        print("[eval] no evaluation saved best parameters yet; using the last checkpoint")
    if not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r} has no checkpoints/ yet")
    return *checkpoint.load_params(run_dir, like), eyes, "last"


def _kind(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "run.json").read_text()).get("kind")
    except (OSError, ValueError):
        return None


def eval_seeds(b: Built, cfg, run_dir: Path) -> dict:
    """A `train.seeds` run: every seed's best parameters (stacked in best/), or the one `eval.seed`
    names, evaluated as `aci_jax.train` evaluates one run (`eval_seed<S>.json` and videos each);
    `eval.json` holds each seed's figures and their spread."""
    import json

    from aci_jax.seeds import STATS, spread

    n = int(cfg.train.seeds)
    seeds = [int(cfg.seed) + i for i in range(n)]
    chosen = cfg.eval.get("seed")
    if chosen is not None and int(chosen) not in seeds:
        raise ConfigError(f"eval.seed={chosen}: not a seed of this run; valid: {seeds} (or null: all)")
    if cfg.eval.params != "best" or not checkpoint.has_steps(run_dir / "best"):
        raise ConfigError(f"run_dir={str(run_dir)!r} is a train.seeds run: its seeds' best parameters are in best/, "
                          f"written when the run finishes (eval.params=best); finish it first (rerun its command)")
    one = jax.eval_shape(b.ppo.init, jax.random.PRNGKey(0)).params
    like = jax.tree.map(lambda x: np.zeros((n, *x.shape), x.dtype), one)
    params, step = checkpoint.load_params(run_dir / "best", like)
    eyes = b.ppo.env.default_eyes
    reports = {}
    for i, s in enumerate(seeds):
        if chosen is None or int(chosen) == s:
            c = OmegaConf.merge(cfg, {"seed": s})
            r = write_evaluation(b, jax.tree.map(lambda x: x[i], params), eyes, c, run_dir, step, f"best_seed{s}",
                                 name=f"eval_seed{s}.json")
            reports[s] = {"fitness": r["fitness"], "success": r["success_rate"], "mean_return": r["mean_return"],
                          **{f"selection_{k}": r["selection"][v] for k, v in
                             (("fitness", "fitness"), ("success", "success_rate"), ("return", "mean_return"))}}
    keys = [k for k in STATS if all(k in r for r in reports.values())]
    out = {"params": "best", "env_steps": step, "seeds": reports,
           "summary": {k: spread([r[k] for r in reports.values()]) for k in keys}}
    atomic_write(run_dir / "eval.json", json.dumps(out, indent=1))
    f = out["summary"]["fitness"]
    text = (f"run {run_dir} ({cfg.expname}), {len(reports)} seed(s), best parameters: fitness mean {f['mean']:.3f} "
            f"[{f['min']:.3f}, {f['max']:.3f}], success mean {out['summary']['success']['mean']:.3f}\n")
    atomic_write(run_dir / "eval_summary.txt", text)
    print(text, end="")
    return out


def show_in_viewer(b: Built, params, eyes, key: jax.Array, fps: float = 10.0) -> None:
    """Play one evaluation env live in MuJoCo's passive viewer, posed from the MJX state each step."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("[eval] no display: skipping the viewer")
        return
    import mujoco
    import mujoco.viewer

    env = b.eval_env
    model, data = env.world.model, mujoco.MjData(env.world.model)
    act = b.ppo.make_policy(params, eyes, deterministic=True)
    step = jax.jit(lambda s: env.step(s, act(s.obs)))
    state = jax.jit(env.reset)(key, eyes)
    with mujoco.viewer.launch_passive(model, data) as viewer:
        for _ in range(env.n_mazes * int(env.cfg.max_episode_steps)):
            if not viewer.is_running():
                break
            data.qpos[:], data.mocap_pos[:] = np.asarray(state.pipeline_state.qpos), np.asarray(state.pipeline_state.mocap_pos)
            mujoco.mj_forward(model, data)
            viewer.sync()
            time.sleep(1 / fps)
            state = step(state)


def main(argv: list[str] | None = None) -> dict:
    with command_errors("eval"):
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> dict:
    """Evaluate without taking the run's lock (a running training may hold it): reads only, and
    writes only its own files (eval.json, eval_summary.txt, videos/eval_*)."""
    cfg, run_dir = load_run_config(argv)
    from aci_jax import backend, compile_cache

    backend.check("eval", bool(cfg.get("allow_cpu", False)))
    compile_cache.enable()
    b = build(cfg)
    if _kind(run_dir) == "seeds":
        return eval_seeds(b, cfg, run_dir)
    params, step, eyes, which = load_params(b, cfg, run_dir)
    report = write_evaluation(b, params, eyes, cfg, run_dir, step, which, name="eval.json")
    summary = (f"run {run_dir} ({cfg.expname}), {which} parameters from env step {step:,}\n"
               f"fitness {report['fitness']:.3f} | mean return {report['mean_return']:.3f} | success rate "
               f"{report['success_rate']:.3f} | failure rate {report['failure_rate']:.3f} | "
               f"{report['episodes']} episodes on the eval env\n")
    if len(b.eval_mazes) > 1:
        summary += "".join(f"  {m}: mean return {report[f'mean_return/{m}']:.3f} | success rate "
                           f"{report[f'success_rate/{m}']:.3f} | failure rate {report[f'failure_rate/{m}']:.3f}\n"
                           for m in b.eval_mazes)
    atomic_write(run_dir / "eval_summary.txt", summary)
    print(summary, end="")
    if cfg.eval.viewer:
        show_in_viewer(b, params, eyes, jax.random.PRNGKey(int(cfg.seed) + 1))
    return report


if __name__ == "__main__":
    main()
