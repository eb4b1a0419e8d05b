"""`python -m aci_jax.evo.analyze run_dir=A [run_dir=B ...] [out=DIR]`: compare evolutions (ACI's
parse_evos). Rewrites each run's own plots, then draws the runs side by side — fitness per generation
(every individual, best and median) and the last generation's best eyes — into `DIR/evolutions.png`
(default: the first run's `plots/`), and prints and writes a summary table (`summary.csv`): per run
the exp, generations, individuals trained, best fitness and where it arose, the best eyes, and the
last generation's median fitness."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from omegaconf import OmegaConf

from aci_jax.config import ConfigError
from aci_jax.evo.plots import _plt, draw_eyes, generation_bests, load_records, plot_fitness, plot_run
from aci_jax.runs import atomic_write, command_errors


def summary(run_dir: Path) -> dict:
    rows, genes = load_records(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else {}
    trained = [r for r in rows if r["trained"]]
    out = {"run": str(run_dir), "exp": cfg.get("expname", "?"), "generations": len({r["generation"] for r in rows}),
           "trained": len(trained), "infeasible": sum(not r["feasible"] for r in rows)}
    if trained:
        b = max(trained, key=lambda r: r["fitness"])
        last = max(r["generation"] for r in trained)
        med = sorted(r["fitness"] for r in trained if r["generation"] == last)
        out.update(best_fitness=round(b["fitness"], 4), best_generation=b["generation"] + 1,
                   best_eyes=f"{int(b['num_eyes'][0])}x{int(b['num_eyes'][1])} eyes of "
                             f"{int(b['resolution'][0])}x{int(b['resolution'][1])}, fov {b['fov'][0]:.0f}, "
                             f"lon ±{b['lon_range'][1]:.0f}",
                   last_median=round(med[len(med) // 2], 4))
    return out


def analyze(run_dirs: list[Path], out: Path | None = None) -> tuple[Path, list[dict]]:
    for d in run_dirs:  # every folder checked before any plot is rewritten
        if not d.is_dir():
            raise ConfigError(f"run_dir={str(d)!r} does not exist")
        if not (d / "population.csv").exists():
            raise ConfigError(f"run_dir={str(d)!r} holds no population.csv: not an evolution run folder")
    for d in run_dirs:
        plot_run(d)
    out = Path(out) if out else run_dirs[0] / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    n = len(run_dirs)
    fig, axes = plt.subplots(2, n, figsize=(4.5 * n, 7), squeeze=False)
    for k, d in enumerate(run_dirs):
        rows, _ = load_records(d)
        plot_fitness(axes[0, k], rows, title=d.name)
        bests = generation_bests(rows)
        axes[1, k].axis("off")
        if bests:
            draw_eyes(axes[1, k], bests[-1], max(max(r["resolution"]) for r in rows))
    fig.tight_layout()
    fig.savefig(out / "evolutions.png", dpi=100)
    plt.close(fig)
    table = [summary(d) for d in run_dirs]
    buf = io.StringIO()
    fields = sorted({k for r in table for k in r}, key=lambda k: list(table[0]).index(k) if k in table[0] else 99)
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(table)
    atomic_write(out / "summary.csv", buf.getvalue())
    return out / "evolutions.png", table


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    with command_errors("analyze"):
        runs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith("run_dir=")]
        outs = [a.split("=", 1)[1] for a in argv if a.startswith("out=")]
        bad = [a for a in argv if not a.startswith(("run_dir=", "out="))]
        if bad or not runs:
            raise ConfigError(f"arguments {bad or argv}: expected run_dir=PATH (one or more) and optionally out=DIR")
        path, table = analyze(runs, Path(outs[0]) if outs else None)
        for r in table:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
        print(f"[analyze] wrote {path} and {path.parent / 'summary.csv'}")
        return table


if __name__ == "__main__":
    main()
