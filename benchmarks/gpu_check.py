"""The prepared device check: one run on a lent GPU (H100/H200) measures what the hardware does.

    python benchmarks/gpu_check.py --out DIR            # on the GPU: fits a 9-minute budget (--budget-s)
    python benchmarks/gpu_check.py --smoke --out DIR    # the same code at tiny sizes on the CPU (< 5 min)

Parts, each timed and printed as it goes, with `DIR/gpu_check.json` rewritten after every measurement
(a run cut off by its time limit still leaves what it finished), each part skipping what would not
fit its share of the budget:
1. devices, versions (jax, jaxlib, mujoco, mjx, flax, brax, evosax), GPU memory, whether MuJoCo Warp
   is importable;
2. env throughput of detection (`jit(vmap(env.step))`, random actions), one 10×10 eye (buffer layout)
   and one 50×1 flatland eye (packed layout, 50 slots), at 4,096 / 16,384 / 65,536 envs, compile time
   separately; with `env.physics_impl=warp` too where Warp is installed;
3. population training (`benchmarks/evo_throughput.py`'s measure: one segment of a vmapped population
   against the same individuals one after another) at P = 1, 16, 64, with memory per individual;
4. a short real evolution of detection (population 16, per-individual budget `--evo-steps`), stopped
   cleanly at the budget (`evolve(..., deadline=)`): how many generations and segments it finished,
   its best and median fitness per generation, the best eyes; its run folder stays outside DIR
   (`--evo-dir`), its fitness and eyes plots are copied in.
DIR gets at most 6 files: gpu_check.json, env_throughput.png, population.png, evo_fitness.png,
evo_eyes.png, gpu_check.log (when run through `tee`, as below).

On a bare GPU machine lent by the device tool (it has JAX with CUDA, flax, optax, orbax; not mujoco,
mjx, brax, evosax, hydra): prepare the wheels here with `../shared/tools/device-wheels.sh`, then run
with `carry: [".whl"]`:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_check.py --out $OUT 2>&1 | tail -c 11000

MuJoCo Warp (`warp-lang`, ~150 MB) is over a device call's 64 MiB carry, so `impl=warp` is measured
only where it is installed (the check says so in `gpu_check.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

FULL = {"env_sizes": [4096, 16384, 65536], "pops": [1, 16, 64], "evo_pop": 16, "evo_generations": 100, "seconds": 3.0,
        "pop_overrides": ["env.n_envs=256", "trainer.n_steps=64", "trainer.n_minibatches=8", "trainer.n_epochs=4",
                          "trainer.total_timesteps=32768", "train.eval_envs=32", "train.eval_every=0"],
        "evo_overrides": ["env.n_envs=256", "trainer.n_steps=64", "trainer.n_minibatches=8", "train.eval_envs=64",
                          "train.final_eval_envs=128", "train.eval_every=4"]}
SMOKE = {"env_sizes": [4], "pops": [2], "evo_pop": 2, "evo_generations": 2, "seconds": 0.3,
         "pop_overrides": ["env.n_envs=4", "trainer.n_steps=8", "trainer.n_minibatches=2", "trainer.n_epochs=1",
                           "trainer.total_timesteps=32", "train.eval_envs=4", "train.eval_every=0",
                           "env.max_episode_steps=16", "env.render.supersample=1"],
         "evo_overrides": ["env.n_envs=4", "trainer.n_steps=8", "trainer.n_minibatches=2", "trainer.n_epochs=1",
                           "train.eval_envs=4", "train.final_eval_envs=4", "train.eval_every=1",
                           "env.max_episode_steps=16", "env.render.supersample=1",
                           # the smoke checks the part's code (evolve with a deadline, its records and
                           # report) in test mode: real tiny evolutions are the test suite's own
                           "trainer.mode=test"]}
EYES = {"10x10": ["env.agents.agent.eyes.resolution=[10,10]"],
        "50x1": ["env.agents.agent.eyes.resolution=[50,1]", "env.agents.agent.eyes.fov=[100.0,45.0]",
                 "env.render.max_pixels=50"]}
# shares of the budget (seconds) each part may start work within
SHARES = {"env": 0.30, "population": 0.30}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, CPU: the same code in < 5 minutes")
    p.add_argument("--budget-s", type=float, default=None,
                   help="whole run (default 540 s; smoke 1800 s: the smoke run checks code, not speed, and must not "
                        "skip a part on a loaded machine)")
    p.add_argument("--evo-steps", type=int, default=None, help="env steps per individual (default 300k; smoke 64)")
    p.add_argument("--evo-dir", type=Path, default=None, help="the evolution's run folder (default /tmp/gpu_check_evo)")
    p.add_argument("--skip", nargs="*", default=[], choices=["env", "population", "evolution"])
    return p.parse_args(argv)


class Report:
    """gpu_check.json, rewritten atomically after every measurement."""

    def __init__(self, out: Path, info: dict):
        self.path, self.data = out / "gpu_check.json", info

    def put(self, key, value):
        self.data[key] = value
        self.save()

    def save(self):
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def log(t0: float, msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - t0:6.1f} s] {msg}", flush=True)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "mujoco", "mujoco-mjx", "flax", "optax",
                 "brax", "evosax", "orbax-checkpoint", "warp-lang"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def device_info() -> dict:
    import jax

    devs = jax.devices()
    mem = {}
    try:
        stats = devs[0].memory_stats() or {}
        mem = {k: stats[k] for k in ("bytes_limit", "bytes_in_use", "peak_bytes_in_use") if k in stats}
    except Exception as e:  # CPU: no memory stats
        mem = {"unavailable": f"{type(e).__name__}"}
    from aci_jax.envs.env import warp_available

    missing = warp_available()
    return {"devices": [f"{d.device_kind} ({d.platform})" for d in devs], "n_devices": len(devs),
            "platform": devs[0].platform, "memory": mem, "versions": versions(), "warp": missing is None,
            "warp_missing": missing}


def env_rate(cfg, n_envs: int, seconds: float) -> dict:
    """Compile time and env-steps/s of jit(vmap(env.step)) on random actions, n_envs envs."""
    import jax

    import aci_jax

    env = aci_jax.make_env(cfg)
    state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), n_envs))
    actions = jax.random.uniform(jax.random.PRNGKey(1), (n_envs, env.action_size), minval=-1, maxval=1)
    t = time.perf_counter()
    step = jax.jit(jax.vmap(env.step)).lower(state, actions).compile()
    compile_s = time.perf_counter() - t
    state = jax.block_until_ready(step(state, actions))  # warm
    n, t = 0, time.perf_counter()
    while n < 3 or (time.perf_counter() - t < seconds and n < 1000):
        state = step(state, actions)
        n += 1
        if n % 10 == 0:
            jax.block_until_ready(state)
    jax.block_until_ready(state)
    dt = time.perf_counter() - t
    return {"n_envs": n_envs, "compile_s": compile_s, "steps": n, "env_steps_per_s": n * n_envs / dt}


def part_env(rep: Report, args, sizes: dict, t0: float, until: float) -> None:
    import aci_jax

    rows = []
    impls = ["jax"] + (["warp"] if rep.data["device"]["warp"] else [])
    for impl in impls:
        for eye, over in EYES.items():
            for n in sizes["env_sizes"]:
                if time.perf_counter() - t0 > until:
                    rows.append({"impl": impl, "eye": eye, "n_envs": n, "skipped": "over the part's time share"})
                    continue
                try:
                    cfg = aci_jax.load_config("detection", [*over, f"env.n_envs={n}", f"env.physics_impl={impl}",
                                                            *(["env.render.supersample=1"] if args.smoke else [])])
                    r = {"impl": impl, "eye": eye, **env_rate(cfg, n, sizes["seconds"])}
                except Exception as e:  # e.g. out of memory at 65,536 envs: recorded, the check goes on
                    r = {"impl": impl, "eye": eye, "n_envs": n, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                rows.append(r)
                rep.put("env_throughput", rows)
                log(t0, f"env {impl} {eye} n_envs={n}: " + (f"{r['env_steps_per_s']:,.0f} env-steps/s, compile "
                                                            f"{r['compile_s']:.1f} s" if "error" not in r else r["error"]))
    if "warp" not in impls:
        rep.put("env_throughput_note", f"impl=warp not measured: needs {rep.data['device']['warp_missing']}")
    plot_env(rows, args.out / "env_throughput.png")


def _loglog(title: str, xlabel: str, ylabel: str):
    """A log-log figure and axes (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_env(rows, path: Path) -> None:
    from aci_jax.viz import save_figure

    fig, ax = _loglog("detection env throughput", "envs", "env-steps/s")
    for key in sorted({(r["impl"], r["eye"]) for r in rows}):
        pts = [(r["n_envs"], r["env_steps_per_s"]) for r in rows if (r["impl"], r["eye"]) == key and "env_steps_per_s" in r]
        if pts:
            ax.plot(*zip(*pts), "o-", label=f"{key[1]} eye, impl={key[0]}")
    ax.legend()
    save_figure(fig, path)


def part_population(rep: Report, args, sizes: dict, t0: float, until: float) -> None:
    import jax
    import jax.numpy as jnp

    import aci_jax
    from aci_jax.evo.run import build_evolution, individual_seed
    from evo_throughput import individuals, timed

    evo = build_evolution(aci_jax.load_config("detection", sizes["pop_overrides"]))
    tr = evo.trainer
    K = max(1, tr.ppo.n_iterations)
    steps_ind = K * tr.ppo.batch_size
    seg1, init1 = jax.jit(lambda m: tr.segment(m, K)), jax.jit(tr.init)
    rows = []
    for P in sizes["pops"]:
        if time.perf_counter() - t0 > until:
            rows.append({"population": P, "skipped": "over the part's time share"})
            continue
        try:
            eyes = individuals(evo, P, 0.5, 0)
            seeds = jnp.asarray([individual_seed(0, 0, i) for i in range(P)], jnp.int32)
            members = jax.jit(jax.vmap(tr.init))(seeds, eyes)
            t = time.perf_counter()
            compiled = jax.jit(jax.vmap(lambda m: tr.segment(m, K))).lower(members).compile()
            compile_s = time.perf_counter() - t
            mem = compiled.memory_analysis()
            per_ind = sum(int(getattr(mem, a, 0) or 0) for a in ("argument_size_in_bytes", "temp_size_in_bytes")) / P
            jax.block_until_ready(compiled(members))
            t_pop = timed(lambda: compiled(members), 1)
            singles = [init1(seeds[i], jax.tree.map(lambda x: x[i], eyes)) for i in range(min(P, 4))]
            jax.block_until_ready(seg1(singles[0]))
            t_seq = timed(lambda: [seg1(m) for m in singles], 1) * P / len(singles)  # 4 timed, scaled to P
            r = {"population": P, "compile_s": compile_s, "population_s": t_pop, "sequential_s_estimate": t_seq,
                 "population_env_steps_per_s": P * steps_ind / t_pop, "sequential_env_steps_per_s": P * steps_ind / t_seq,
                 "ratio": t_seq / t_pop, "memory_per_individual_bytes": per_ind,
                 "settings": {"n_envs": tr.ppo.n_envs, "iterations": K, "batch": tr.ppo.batch_size}}
        except Exception as e:
            r = {"population": P, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append(r)
        rep.put("population", rows)
        log(t0, f"population P={P}: " + (f"{r['population_env_steps_per_s']:,.0f} env-steps/s vs sequential "
                                         f"{r['sequential_env_steps_per_s']:,.0f} ({r['ratio']:.2f}x), "
                                         f"{r['memory_per_individual_bytes'] / 2**20:.1f} MiB/individual, compile "
                                         f"{r['compile_s']:.1f} s" if "error" not in r else r["error"]))
    plot_population(rows, args.out / "population.png")


def plot_population(rows, path: Path) -> None:
    from aci_jax.viz import save_figure

    fig, ax = _loglog("population training", "population P", "training env-steps/s")
    ok = [r for r in rows if "population_env_steps_per_s" in r]
    if ok:
        ax.plot([r["population"] for r in ok], [r["population_env_steps_per_s"] for r in ok], "o-", label="population (vmap)")
        ax.plot([r["population"] for r in ok], [r["sequential_env_steps_per_s"] for r in ok], "s--", label="sequential")
    ax.legend()
    save_figure(fig, path)


def part_evolution(rep: Report, args, sizes: dict, t0: float, deadline_wall: float) -> None:
    import aci_jax
    from aci_jax.evo.run import evolve
    from aci_jax.runs import read_jsonl

    d = args.evo_dir or Path("/tmp/gpu_check_evo")
    shutil.rmtree(d, ignore_errors=True)
    steps = args.evo_steps or (64 if args.smoke else 300_000)
    cfg = aci_jax.load_config("detection", [*sizes["evo_overrides"], f"trainer.total_timesteps={steps}",
                                            f"evo.population_size={sizes['evo_pop']}",
                                            f"evo.num_generations={sizes['evo_generations']}"])
    t = time.perf_counter()
    out = evolve(cfg, d, deadline=deadline_wall)
    gens = read_jsonl(d / "generations.jsonl")
    segs = read_jsonl(d / "training.jsonl")
    r = {"run_dir": str(d), "population": sizes["evo_pop"], "env_steps_per_individual": steps,
         "seconds": time.perf_counter() - t, "generations_finished": len(gens), "stopped_by_budget": out["stopped"],
         "segments_trained": len(segs),
         "per_generation": [{k: g.get(k) for k in ("generation", "best_fitness", "median_fitness", "wall_s",
                                                   "env_steps_per_s", "best")} for g in gens],
         "best": out["best"]}
    rep.put("evolution", r)
    log(t0, f"evolution: {len(gens)} generation(s), {len(segs)} segments in {r['seconds']:.0f} s; best "
            f"{(out['best'] or {}).get('fitness')}")
    for name in ("fitness.png", "eyes.png"):
        if (d / "plots" / name).is_file():
            shutil.copy(d / "plots" / name, args.out / f"evo_{name}")


def main(argv=None) -> dict:
    args = parse(argv)
    sizes = SMOKE if args.smoke else FULL
    budget = args.budget_s or (1800.0 if args.smoke else 540.0)
    if args.smoke:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    t0, wall0 = time.perf_counter(), time.time()
    from aci_jax import compile_cache

    compile_cache.enable()
    rep = Report(args.out, {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "smoke": args.smoke,
                            "budget_s": budget})
    rep.put("device", device_info())
    log(t0, f"devices {rep.data['device']['devices']}, memory {rep.data['device']['memory']}")
    parts = [("env", lambda: part_env(rep, args, sizes, t0, SHARES["env"] * budget)),
             ("population", lambda: part_population(rep, args, sizes, t0, (SHARES["env"] + SHARES["population"]) * budget)),
             # the evolution stops at a segment boundary before the budget, with a margin for its records
             ("evolution", lambda: part_evolution(rep, args, sizes, t0, wall0 + 0.92 * budget))]
    times = {}
    for name, fn in parts:
        if name in args.skip:
            continue
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # one part's failure never loses the others' figures
            rep.put(f"{name}_error", f"{type(e).__name__}: {str(e)[:500]}")
            log(t0, f"{name} failed: {type(e).__name__}: {e}")
        times[name] = time.perf_counter() - t
        rep.put("part_seconds", times)
        log(t0, f"part {name} done in {times[name]:.0f} s")
    rep.put("total_s", time.perf_counter() - t0)
    log(t0, f"done; {args.out / 'gpu_check.json'}")
    return rep.data


if __name__ == "__main__":
    main()
