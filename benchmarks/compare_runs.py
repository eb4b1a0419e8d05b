"""Learning curves of several runs in one figure: an evaluation metric vs env steps.

    python benchmarks/compare_runs.py RUN_DIR... [--metric success_rate] [--label NAME...] --out fig.png

Each run folder's `evaluations.jsonl` (written by `python -m aci_jax.train`) gives one line; the
metric is any key of it (`success_rate`, `mean_return`, `fitness`, `success_rate/COMPLEX`, ...).
Used for the learning figures in `benchmarks/figures/` (see RESULTS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aci_jax.train import read_jsonl  # noqa: E402


def curve(run_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """(env steps, metric) of a run's evaluations."""
    path = run_dir / "evaluations.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run_dir}: no evaluations.jsonl (not a run folder, or never evaluated)")
    rows = read_jsonl(path)
    if rows and metric not in rows[0]:
        raise SystemExit(f"--metric {metric!r} is not in {path}; valid: {sorted(rows[0])}")
    return [r["env_steps"] for r in rows], [r[metric] for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--metric", default="success_rate")
    p.add_argument("--label", nargs="*", help="one per run (default: the folder names)")
    p.add_argument("--title", default="")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    labels = a.label or [r.name for r in a.runs]
    if len(labels) != len(a.runs):
        raise SystemExit(f"--label: {len(labels)} labels for {len(a.runs)} runs")
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = plt.cm.tab10.colors if len(a.runs) <= 10 else plt.cm.tab20.colors
    for i, (run, label) in enumerate(zip(a.runs, labels)):
        ax.plot(*curve(run, a.metric), "o-", ms=3, label=label, color=colors[i % len(colors)])
    ax.set(xlabel="env steps", ylabel=f"evaluation {a.metric}", title=a.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
