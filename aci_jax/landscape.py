"""`python -m aci_jax.landscape exp=X train.seeds=3 [landscape.layouts=[a,b,...]]`: does the task's
fitness rank eyes as the paper did? Fixed eye layouts, each a point of the evolution's search space,
trained over seeds exactly as an evolution's individual would be, ranked by the final evaluation on
fresh episodes.

Each layout (`landscape.catalogue.<name>`: a value for every evolved gene, `evo.evolve`) is decoded
by the evolution's genome (so it is what an individual with those genes gets: the packed pixel
layout at the pixel budget, the population's static maxima) and trained as `train.seeds` seeds
(`aci_jax.seeds`, one vmapped program) in `<run_dir>/<layout>/`. The run folder (kind `landscape`)
holds `landscape.csv` (per layout: its eyes, pixels, and mean, median, std, min and max over seeds of
the final fitness, success and mean return, and of the selection evaluation's success),
`landscape.json` (the same with every seed's values) and `plots/landscape.png`, rewritten after each
layout. The same command resumes: finished layouts are read, an unfinished one resumes its seeds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path

import hydra
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from aci_jax.config import CONFIG_DIR, ConfigError
from aci_jax.evo.genome import Genome, as_config, pixels
from aci_jax.runs import RunFolder, atomic_write, command_errors, command_run_dir

STATS = ("fitness", "success", "mean_return", "selection_fitness", "selection_success")


def layout_eyes(genome: Genome, name: str, genes: dict) -> dict:
    """The eye config of a layout given as gene values (every evolved gene, within its bounds,
    feasible); ConfigError naming the layout otherwise."""
    where = f"landscape.catalogue.{name}"
    missing, extra = set(genome.names) - set(genes), set(genes) - set(genome.names)
    if missing or extra:
        raise ConfigError(f"{where}: give a value for each evolved gene {genome.names} (evo.evolve); "
                          f"missing {sorted(missing)}, unknown {sorted(extra)}")
    raw = []
    for g in genome.genes:
        v = genes[g.name]
        if not isinstance(v, (int, float)) or not g.low <= v <= g.high:
            raise ConfigError(f"{where}.{g.name}={v!r} must be a number in [{g.low:g}, {g.high:g}] (evo.genes.{g.name})")
        raw.append(g.coordinate(float(v)))
    eyes = genome.decode(jnp.asarray(raw, jnp.float32))
    ok, bad = genome.feasible(eyes)
    if not bool(ok):
        raise ConfigError(f"{where}: infeasible ({genome.reasons(np.asarray(bad))}): an evolution would never "
                          f"train it; change its genes or evo.constraints")
    return {**as_config(eyes), "pixels": int(pixels(eyes))}


def run_landscape(cfg: DictConfig, run_dir: str | Path) -> list[dict]:
    """Train (or resume) every layout of `cfg.landscape.layouts`; the table's rows."""
    from aci_jax.evo.run import genome_of, individual_config, population_config

    genome = genome_of(cfg)
    names = [str(n) for n in cfg.landscape.layouts]
    catalogue = cfg.landscape.catalogue
    unknown = [n for n in names if n not in catalogue]
    if unknown or not names:
        raise ConfigError(f"landscape.layouts={names}: unknown {unknown}; valid: {sorted(catalogue)}")
    eyes = {n: layout_eyes(genome, n, dict(catalogue[n])) for n in names}  # all checked before training
    with RunFolder.open(run_dir, cfg, "landscape") as folder:
        pop_cfg = population_config(folder.cfg, genome)
        rows = []
        for i, name in enumerate(names):
            sub = folder.path / name
            e = {k: v for k, v in eyes[name].items() if k != "pixels"}
            print(f"[landscape] layout {i + 1}/{len(names)} {name}: {_describe(eyes[name])}", flush=True)
            if not (sub / "summary.json").is_file():
                from aci_jax.seeds import train_seeds

                t = time.perf_counter()
                train_seeds(individual_config(pop_cfg, e, int(cfg.seed)), sub)
                print(f"[landscape] {name} trained in {time.perf_counter() - t:.0f} s", flush=True)
            rows.append(_row(name, eyes[name], sub))
            write_table(folder.path, rows)
    _print(rows)
    return rows


def _describe(e: dict) -> str:
    lo, hi = e["lon_range"]
    return (f"{e['num_eyes'][1]} eye(s) x {e['resolution'][0]}x{e['resolution'][1]} px, fov {e['fov'][0]:g} deg, "
            f"lon {lo:g}..{hi:g} deg ({e['pixels']} px)")


def _row(name: str, eyes: dict, sub: Path) -> dict:
    summary = json.loads((sub / "summary.json").read_text())
    seeds = list(csv.DictReader(io.StringIO((sub / "seeds.csv").read_text())))
    num = lambda v: float(v) if v not in ("", None) else math.nan
    row = {"layout": name, "n_eyes": eyes["num_eyes"][1], "width": eyes["resolution"][0],
           "fov_x": round(eyes["fov"][0], 3), "lon_range": round(eyes["lon_range"][1], 3), "pixels": eyes["pixels"], "seeds": len(seeds),
           "evaluation": summary.get("evaluation", "selection")}
    for k in STATS:
        for s in ("mean", "median", "std", "min", "max"):
            row[f"{k}_{s}"] = summary[k][s]
    row["per_seed"] = {k: [num(r[k]) for r in seeds] for k in STATS}
    return row


def write_table(run_dir: Path, rows: list[dict]) -> None:
    """landscape.csv, landscape.json and plots/landscape.png of the layouts done so far."""
    fields = [k for k in rows[0] if k != "per_seed"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(run_dir / "landscape.csv", buf.getvalue())
    atomic_write(run_dir / "landscape.json", json.dumps(rows, indent=1))
    plot_landscape(run_dir, rows)


def plot_landscape(run_dir: Path, rows: list[dict]) -> Path:
    """plots/landscape.png: final fitness and success per layout, every seed and mean ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aci_jax.viz import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) * 2), 3.8))
    x = np.arange(len(rows))
    for ax, (k, label) in zip(axes, [("fitness", "fitness (fresh episodes)"), ("success", "success rate (fresh episodes)")]):
        for i, r in enumerate(rows):
            v = np.asarray(r["per_seed"][k], np.float64)
            ax.plot(np.full(len(v), i) + np.linspace(-0.12, 0.12, len(v)), v, "o", color="0.55", ms=4)
            if r[f"{k}_mean"] is not None:
                ax.errorbar(i + 0.25, r[f"{k}_mean"], yerr=r[f"{k}_std"], fmt="s", color="C0", capsize=4)
        ax.set_xticks(x, [f"{r['layout']}\n{r['n_eyes']}x{r['width']}px ±{r['lon_range']:g}°" for r in rows], fontsize=8)
        ax.set(ylabel=label, xlim=(-0.5, len(rows) - 0.5))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run_dir.name}: grey = seeds, blue = mean ± std")
    return save_figure(fig, run_dir / "plots" / "landscape.png")


def _print(rows: list[dict]) -> None:
    f = lambda v: "  n/a" if v is None else f"{v:6.3f}"
    print("[landscape] layout            pixels  fitness mean ± std   success mean ± std   (fresh episodes)")
    for r in rows:
        print(f"[landscape] {r['layout']:<16} {r['pixels']:>6}  {f(r['fitness_mean'])} ± {f(r['fitness_std'])}   "
              f"{f(r['success_mean'])} ± {f(r['success_std'])}")


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    with command_errors("landscape"):
        if int(cfg.train.get("seeds", 1)) < 2:
            raise ConfigError(f"train.seeds={cfg.train.seeds}: a landscape compares layouts over seeds; "
                              "give train.seeds >= 2 (e.g. 3)")
        if cfg.trainer.get("mode", "ppo") == "test":
            raise ConfigError("trainer.mode=test trains nothing: a landscape needs trainer.mode=ppo")
        run_landscape(cfg, command_run_dir(cfg, "landscape"))


if __name__ == "__main__":
    main()
