"""Grid sweeps: one run folder per member, named from its swept values, and a summary.

`python -m aci_jax.train -m exp=detection seed=0,1 trainer.learning_rate=1e-3,3e-4` (Hydra's basic
sweeper) and `launch/slurm.py ... train exp=detection seed=0,1 ...` (one Slurm array) lay a sweep out
the same way:

    runs/<expname>/sweep_<date>_<time>/      (hydra.sweep.dir; pass hydra.sweep.dir=X to choose it)
        sweep.json                           swept keys and values, the fixed overrides, the members
        seed=0,trainer.learning_rate=0.001/  a member's run folder (keys sorted, as Hydra's
        seed=1,trainer.learning_rate=0.001/    override_dirname; '/' in a value becomes '_')
        ...
        summary.csv  summary_groups.csv  summary.png

`summary.csv` has one row per member (its swept values, status, fitness, success rate, mean return);
`summary_groups.csv` and `summary.png` aggregate over seeds (mean, std, min, max, n) per combination of
the other swept values. The summary is written when a sweep ends (the Hydra callback below; a
dependent Slurm job after an array) and on demand for a running or partial sweep:
`python -m aci_jax.sweep DIR`. Rerunning a sweep's command with its `hydra.sweep.dir` resumes
every member (each member resumes its own run folder).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from aci_jax.config import ConfigError
from aci_jax.runs import atomic_write, read_jsonl

SWEEP_FILE = "sweep.json"
SEED_KEY = "seed"
RESOLVER = "aci_sweep_member"


# -- the grid -----------------------------------------------------------------------------------------

def parse(overrides: Sequence[str]) -> list:
    """Hydra's parse of command-line overrides (a ConfigError naming the bad one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"bad override in {list(overrides)}: {e}") from None


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys that a sweep varies (`seed=0,1`, `x=range(3)`, `x=choice(a,b)`)."""
    return [o.get_key_element().lstrip("+~") for o in parse(overrides) if o.is_sweep_override()]


def grid(overrides: Sequence[str]) -> list[list[str]]:
    """Every member's overrides, in Hydra's basic sweeper's order (its own expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    try:
        return [list(m) for batch in BasicSweeper.split_arguments(parse(overrides), None) for m in batch]
    except HydraException as e:
        raise ConfigError(str(e)) from None


def member_name(overrides: Sequence[str], swept: Sequence[str], num: int = 0) -> str:
    """A member's folder name: `key=value` of its swept keys, sorted and joined by ','
    (`job<num>` when nothing is swept)."""
    keep = sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in set(swept))
    return re.sub(r"[/\s]", "_", ",".join(keep)) if keep else f"job{num}"


def member_values(overrides: Sequence[str], swept: Sequence[str]) -> dict[str, str]:
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides)
    return {k: v for k, v in pairs if k in set(swept)}


def write_sweep_file(sweep_dir: Path, command: str, overrides: Sequence[str]) -> dict:
    """sweep.json: what the sweep is (its keys, values and members), for naming and the summary."""
    swept = swept_keys(overrides)
    members = grid(overrides)
    names = [member_name(m, swept, i) for i, m in enumerate(members)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sweep members share run folders {dupes}: a swept value is repeated")
    info = {"command": command, "swept": {k: sorted({member_values(m, swept)[k] for m in members},
                                                    key=_sort_key) for k in swept},
            "fixed": [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in set(swept)],
            "members": [{"name": n, "overrides": m} for n, m in zip(names, members)]}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(sweep_dir / SWEEP_FILE, json.dumps(info, indent=1))
    return info


def _sort_key(v: str) -> tuple:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


# -- Hydra: member folders of `-m` and the summary at the end ---------------------------------------

def _member_resolver(sweep_dir: str, overrides: Any, num: Any) -> str:
    """`hydra.sweep.subdir`: the member's name from the swept keys in sweep.json (written by
    SweepCallback at the sweep's start); the job number when there is none."""
    path = Path(sweep_dir) / SWEEP_FILE
    ov = [str(o) for o in overrides]
    if not path.is_file():
        return f"job{num}"
    return member_name(ov, list(json.loads(path.read_text())["swept"]), int(num))


if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, _member_resolver)

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object


class SweepCallback(Callback):
    """`hydra.callbacks.sweep` in configs/config.yaml: writes sweep.json when a multirun starts and
    the summary when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = [str(o) for o in config.hydra.overrides.task]
        _validate_members(config, task)  # a bad value in any member: exit 2 before the sweep's folder
        write_sweep_file(Path(config.hydra.sweep.dir), config.hydra.job.name, task)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        paths = summarize(Path(config.hydra.sweep.dir))
        print(f"[sweep] summary: {', '.join(str(p) for p in paths)}", flush=True)


def _validate_members(config: DictConfig, task: Sequence[str]) -> None:
    """Every member's config, composed as Hydra's launcher will compose it, validated before anything
    is written: a config error names the member and exits 2, leaving no sweep folder behind."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from aci_jax.config import validate

    swept = swept_keys(task)
    loader = GlobalHydra.instance().config_loader()
    for i, m in enumerate(grid(task)):
        try:
            c = loader.load_sweep_config(config, list(m))
            validate(OmegaConf.masked_copy(c, [k for k in c if k != "hydra"]))
        except ConfigError as e:
            print(f"config error: sweep member {member_name(m, swept, i)}: {e}", file=sys.stderr)
            raise SystemExit(2) from None


# -- the summary ----------------------------------------------------------------------------------------

def _member_dirs(sweep_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """(folder name, swept values) of each member: from sweep.json, else every run folder below
    `sweep_dir` with the keys whose overrides differ between them."""
    info = sweep_dir / SWEEP_FILE
    if info.is_file():
        s = json.loads(info.read_text())
        return [(m["name"], member_values(m["overrides"], list(s["swept"]))) for m in s["members"]]
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "config.yaml").is_file())
    if not runs:
        raise ConfigError(f"{sweep_dir}: neither {SWEEP_FILE} nor run folders; not a sweep folder")
    ov = {p.name: [str(o) for o in OmegaConf.load(p / ".hydra" / "overrides.yaml")]
          if (p / ".hydra" / "overrides.yaml").is_file() else [] for p in runs}
    values = {n: dict(o.lstrip("+~").split("=", 1) for o in v if "=" in o) for n, v in ov.items()}
    keys = sorted({k for v in values.values() for k in v if k != "run_dir"
                   and len({str(w.get(k)) for w in values.values()}) > 1})
    return [(n, {k: v.get(k, "") for k in keys}) for n, v in values.items()]


def member_result(run_dir: Path) -> dict[str, Any]:
    """status (pending | running | done), env steps and the fitness, success rate and mean return:
    fitness.json's when done, else the latest evaluation's (an evolution: its best so far)."""
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file():
        return {"status": "pending"}
    fit = run_dir / "fitness.json"
    if fit.is_file():
        r = json.loads(fit.read_text())
        return {"status": "done", "env_steps": r.get("env_steps"), "fitness": r.get("fitness"),
                "success_rate": r.get("success_rate"), "mean_return": r.get("mean_return")}
    evals = read_jsonl(run_dir / "evaluations.jsonl")
    if evals:
        r = evals[-1]
        return {"status": "running", "env_steps": r.get("env_steps"), "fitness": r.get("fitness"),
                "success_rate": r.get("success_rate"), "mean_return": r.get("mean_return")}
    gens = read_jsonl(run_dir / "generations.jsonl")  # an evolution
    if gens:
        done = (run_dir / "best" / "best.json").is_file()
        return {"status": "done" if done else "running", "generations": len(gens),
                "fitness": gens[-1].get("best_fitness_so_far")}
    return {"status": "running"}


def _stats(xs: list[float]) -> dict[str, float | int | None]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(sweep_dir: str | Path) -> list[Path]:
    """Write summary.csv, summary_groups.csv and summary.png into `sweep_dir`; return their paths."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir}: no such sweep folder")
    members = _member_dirs(sweep_dir)
    keys = sorted({k for _, v in members for k in v})
    rows = [{"member": n, **v, **member_result(sweep_dir / n)} for n, v in members]
    metrics = ("fitness", "success_rate", "mean_return")
    cols = ["member", *keys, "status", "env_steps", "generations", *metrics]
    paths = [_write_csv(sweep_dir / "summary.csv", rows, cols)]
    group_keys = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in group_keys), []).append(r)
    grows = []
    for g, rs in sorted(groups.items(), key=lambda kv: [_sort_key(v) for v in kv[0]]):
        row = {**dict(zip(group_keys, g)), "members": len(rs), "done": sum(r["status"] == "done" for r in rs)}
        for m in metrics:
            row.update({f"{m}_{s}": v for s, v in _stats([r.get(m) for r in rs]).items()})
        grows.append(row)
    gcols = [*group_keys, "members", "done", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "min", "max", "n"))]
    paths.append(_write_csv(sweep_dir / "summary_groups.csv", grows, gcols))
    paths.append(_plot(sweep_dir / "summary.png", group_keys, groups, grows))
    done = sum(r["status"] == "done" for r in rows)
    print(f"[sweep] {sweep_dir}: {done}/{len(rows)} members done", flush=True)
    for r in grows:
        label = ", ".join(f"{k}={r[k]}" for k in group_keys) or "all"
        f = lambda m: "n/a" if r[f"{m}_mean"] is None else f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}"
        print(f"  {label}: fitness {f('fitness')}, success {f('success_rate')} (n={r['fitness_n']})")
    return paths


def _write_csv(path: Path, rows: list[dict], cols: list[str]) -> Path:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in cols})
    atomic_write(path, buf.getvalue())
    return path


def _plot(path: Path, group_keys: list[str], groups: dict, grows: list[dict]) -> Path:
    """Fitness and success rate per combination of the non-seed swept values: each seed a dot, the
    mean with a bar of ± one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(f"{k.split('.')[-1]}={v}" for k, v in zip(group_keys, g)) or "all" for g in
              sorted(groups, key=lambda g: [_sort_key(v) for v in g])]
    ordered = [groups[g] for g in sorted(groups, key=lambda g: [_sort_key(v) for v in g])]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(labels) + 3), 4))
    for ax, m, name in zip(axes, ("fitness", "success_rate"), ("fitness", "success rate")):
        for i, rs in enumerate(ordered):
            ys = [r.get(m) for r in rs if r.get(m) is not None]
            ax.plot([i] * len(ys), ys, "o", color="tab:blue", alpha=0.4, ms=5)
        means = [r[f"{m}_mean"] for r in grows]
        x = [i for i, v in enumerate(means) if v is not None]
        ax.errorbar(x, [means[i] for i in x], yerr=[grows[i][f"{m}_std"] for i in x], fmt="s",
                    color="black", capsize=4, label="mean ± std over seeds")
        ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20 if len(labels) > 4 else 0)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set(ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m aci_jax.sweep SWEEP_DIR   (writes summary.csv, summary_groups.csv, "
              "summary.png)", file=sys.stderr)
        return 2
    try:
        paths = summarize(argv[0])
    except ConfigError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    print(f"[sweep] wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
