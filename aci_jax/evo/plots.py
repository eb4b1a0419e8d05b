"""Evolution plots from a run folder's records (population.csv, generations.jsonl).

- `fitness.png`: every trained individual's fitness per generation (points), best and median lines;
- `genes.png`: each gene over generations (top row; colour = fitness) and against fitness (bottom);
- `eyes.png`: each generation's best individual's eyes drawn on the agent's body seen from above:
  one wedge per eye column at its longitude, as wide as its horizontal field of view, its length
  and colour giving the pixels across (resolution), with the grid size and fitness in the title.
`plot_runs` draws several runs side by side (`python -m aci_jax.evo.analyze`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_records(run_dir: Path) -> tuple[list[dict], list[str]]:
    """(population rows with numbers parsed, evolved gene names) of a run folder."""
    from aci_jax.evo.run import read_population

    path = Path(run_dir) / "population.csv"
    rows = read_population(path) if path.exists() else []
    genes = [k[4:] for k in (rows[0] if rows else {}) if k.startswith("raw_")]
    out = []
    for r in rows:
        p = dict(r)
        for k in ("generation", "individual", "rank", "pixels", "seed", "best_step", "env_steps"):
            p[k] = int(p[k])
        for k in ("fitness", *(f"gene_{g}" for g in genes)):
            p[k] = float(p[k]) if p[k] not in ("", "None") else np.nan
        for k in ("feasible", "trained", "diverged"):
            p[k] = p[k] == "True"
        for k in ("num_eyes", "resolution", "fov", "lat_range", "lon_range"):
            p[k] = [float(v) for v in p[k].split()]
        out.append(p)
    return out, genes


def generation_bests(rows: list[dict]) -> list[dict]:
    best = {}
    for r in rows:
        if r["trained"] and (r["generation"] not in best or r["fitness"] > best[r["generation"]]["fitness"]):
            best[r["generation"]] = r
    return [best[g] for g in sorted(best)]


def plot_fitness(ax, rows: list[dict], title: str = "") -> None:
    tr = [r for r in rows if r["trained"]]
    if not tr:
        return
    g = np.array([r["generation"] for r in tr]) + 1
    f = np.array([r["fitness"] for r in tr])
    ax.scatter(g, f, s=10, alpha=0.5, color="tab:gray", label="individuals")
    gens = np.unique(g)
    ax.plot(gens, [f[g == k].max() for k in gens], "o-", color="tab:green", label="best")
    ax.plot(gens, [np.median(f[g == k]) for k in gens], "s--", color="tab:blue", label="median")
    ax.set(xlabel="generation", ylabel="fitness", title=title or "fitness")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def draw_eyes(ax, r: dict, max_res: float) -> None:
    """One individual's eyes on the body (top view): a wedge per eye column."""
    import matplotlib.patches as mp
    import matplotlib.cm as cm

    body = 0.2
    ax.add_patch(mp.Circle((0, 0), body, color="0.85", ec="0.4"))
    ax.arrow(0, 0, body * 0.8, 0, width=0.01, color="0.4")  # heading
    n_lat, n_lon = int(r["num_eyes"][0]), int(r["num_eyes"][1])
    lo, hi = r["lon_range"]
    span = hi - lo
    if n_lon == 1:
        lons = [(lo + hi) / 2]
    elif span >= 360 - 1e-6:
        lons = [lo + span * b / n_lon for b in range(n_lon)]
    else:
        lons = [lo + span * b / (n_lon - 1) for b in range(n_lon)]
    w, h = r["resolution"]
    fovx = r["fov"][0]
    length = 0.15 + 0.45 * np.log1p(w) / np.log1p(max(max_res, 2))
    colour = cm.viridis(min(np.log1p(w) / np.log1p(max(max_res, 2)), 1.0))
    for lon in lons:
        ax.add_patch(mp.Wedge((0, 0), body + length, lon - fovx / 2, lon + fovx / 2, width=length,
                              color=colour, alpha=0.55))
        c = np.deg2rad(lon)
        ax.plot([body * np.cos(c)], [body * np.sin(c)], "k.", ms=4)
    ax.set_xlim(-0.9, 0.9)
    ax.set_ylim(-0.9, 0.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"g{r['generation'] + 1}: {n_lat}×{n_lon} eyes of {int(w)}×{int(h)}\nfov {fovx:.0f}° "
                 f"fit {r['fitness']:.2f}", fontsize=7)


def plot_run(run_dir: Path) -> list[Path]:
    """fitness.png, genes.png and eyes.png in `<run_dir>/plots`."""
    plt = _plt()
    run_dir = Path(run_dir)
    rows, genes = load_records(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    if not rows:
        return []
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_fitness(ax, rows)
    fig.tight_layout()
    fig.savefig(out / "fitness.png", dpi=110)
    plt.close(fig)
    paths.append(out / "fitness.png")

    tr = [r for r in rows if r["trained"]]
    if tr and genes:
        fig, axes = plt.subplots(2, len(genes), figsize=(3.2 * len(genes), 6), squeeze=False)
        f = np.array([r["fitness"] for r in tr])
        g = np.array([r["generation"] for r in tr]) + 1
        for k, name in enumerate(genes):
            v = np.array([r[f"gene_{name}"] for r in tr])
            sc = axes[0, k].scatter(g, v, c=f, s=12, cmap="viridis")
            axes[0, k].set(xlabel="generation", ylabel=name)
            axes[1, k].scatter(v, f, s=12, c=g, cmap="plasma")
            axes[1, k].set(xlabel=name, ylabel="fitness")
            for a in axes[:, k]:
                a.grid(alpha=0.3)
        fig.colorbar(sc, ax=axes[0, -1], label="fitness")
        fig.tight_layout()
        fig.savefig(out / "genes.png", dpi=100)
        plt.close(fig)
        paths.append(out / "genes.png")

    bests = generation_bests(rows)
    if bests:
        n = len(bests)
        cols = min(n, 8)
        fig, axes = plt.subplots(-(-n // cols), cols, figsize=(2.2 * cols, 2.4 * -(-n // cols)), squeeze=False)
        max_res = max(max(r["resolution"]) for r in rows)
        for a in axes.flat:
            a.axis("off")
        for a, r in zip(axes.flat, bests):
            draw_eyes(a, r, max_res)
        fig.suptitle("best individual of each generation (top view; heading →)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "eyes.png", dpi=110)
        plt.close(fig)
        paths.append(out / "eyes.png")
    return paths
