"""Evolution throughput: one population segment (`jax.vmap` of `PopulationTrainer.segment`) against
the same individuals' segments run one after another, plus an XLA cost analysis and an H200 roofline.

Config: `exp=quick` with small overrides (`--overrides`), built by `build_evolution` (packed pixel
layout, max_pixels from the pixel budget, 50). Individuals: individual 0 is the initial genome (ACI's
single 1-pixel eye); the others are random genomes around it (initial + `--sigma` * N(0, 1), decoded
with `evo.genome.decode`, infeasible ones skipped), seeds from `individual_seed`.

Per population size P (`--pops`): one segment of K = `--iters` PPO iterations (and the segment's one
evaluation on the eval env, which the evolution also runs), compile excluded (each program runs once
first), best of `--repeats`:
  (a) population: `jit(vmap(lambda m: trainer.segment(m, K)))` on a Member batch from `vmap(trainer.init)`;
  (b) sequential: `jit(lambda m: trainer.segment(m, K))` on each individual in turn.
env-steps/s counts training steps only (K x n_envs x n_steps per individual); the evaluation's steps
are listed separately. Memory per individual: (argument + temp bytes) / P of the compiled population
segment (`memory_analysis()`).

Cost analysis: XLA's `cost_analysis()` counts a while/scan loop body ONCE, whatever its trip count, so
the compiled segment's numbers are not per-iteration numbers. Instead the two loop bodies of an
iteration are compiled alone, vmapped over the population: one rollout step (policy forward, sampling,
`vmap(env.step)` over n_envs) and one minibatch update (loss, gradient, optimiser); per iteration
cost = n_steps x rollout step + n_epochs x n_minibatches x minibatch (GAE, permutation and the
evaluation are left out; loops inside env.step itself, if any, would also count once: the number of
while loops left in the compiled rollout step is reported). Bytes accessed are those of the CPU
compile (its fusion decisions), an estimate of what a GPU program would move.

Roofline on an H200 (ASSUMED peaks, not measured: 67 TFLOP/s FP32 dense without tensor cores,
4.8 TB/s HBM3e, 141 GB): time per env-step = max(FLOPs / peak, bytes / bandwidth), at a population
large enough to fill the device. Compared with the targets: a paper-scale evolution, 16 generations x
50 individuals x 1M steps (800M env steps) in under an hour (≈ 222k env-steps/s), and ≥ 1M env-steps/s.

    python benchmarks/evo_throughput.py --pops 1 4            # CPU (a few minutes on 2 cores)
    python benchmarks/evo_throughput.py --pops 1 4 16 64 --platform cuda \
        --overrides env.n_envs=256 trainer.n_steps=64 trainer.n_minibatches=8 train.eval_envs=16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from machine import machine_info

H200 = {"flops_fp32": 67e12, "hbm_bytes_per_s": 4.8e12, "hbm_bytes": 141e9}
TARGET_PAPER = 16 * 50 * 1_000_000 / 3600.0  # env-steps/s for 16 x 50 x 1M steps in one hour
TARGET_1M = 1e6
DEFAULT_OVERRIDES = ["env.n_envs=8", "trainer.n_steps=32", "trainer.n_minibatches=4", "trainer.n_epochs=1",
                     "trainer.total_timesteps=1024", "train.eval_envs=8", "train.eval_every=0"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pops", type=int, nargs="+", default=[1, 4])
    p.add_argument("--iters", type=int, default=2, help="PPO iterations per segment (K)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exp", default="quick")
    p.add_argument("--overrides", nargs="*", default=DEFAULT_OVERRIDES)
    p.add_argument("--platform", default=None, help="JAX platform (cpu, cuda); default: JAX's")
    p.add_argument("--out", default=str(Path(__file__).with_name("evo_throughput.json")))
    return p.parse_args(argv)


def individuals(evo, n, sigma, seed):
    """n feasible eyes: the initial genome, then random genomes around it."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    g = evo.genome
    raw = g.initial()[None] + sigma * jax.random.normal(jax.random.PRNGKey(seed), (8 * n + 8, g.size))
    raw = raw.at[0].set(g.initial())
    eyes = jax.vmap(g.decode)(raw)
    ok = np.asarray(jax.vmap(lambda e: g.feasible(e)[0])(eyes))
    idx = np.flatnonzero(ok)[:n]
    if len(idx) < n:
        raise SystemExit(f"only {len(idx)} feasible genomes of {len(ok)}")
    return jax.tree.map(lambda x: x[jnp.asarray(idx)], eyes)


def describe(eyes, i):
    from aci_jax.evo.genome import as_config

    import jax
    c = as_config(jax.tree.map(lambda x: x[i], eyes))
    return {k: c[k] for k in ("num_eyes", "resolution") if k in c}


def cost_of(compiled):
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


def loop_costs(trainer, members, P):
    """Per-iteration FLOPs and bytes of the population (loop bodies compiled alone; see the docstring)."""
    import jax
    import jax.numpy as jnp

    ppo = trainer.ppo
    c = ppo.cfg
    ts = members.ts

    def rollout_step(params, eyes, state, k):
        mean, log_std, value = ppo.network.apply(params, state.obs, eyes)
        action = mean + jnp.exp(log_std) * jax.random.normal(k, mean.shape)
        nxt = jax.vmap(ppo.env.step)(state, action)
        return nxt, action, value

    keys = jax.random.split(jax.random.PRNGKey(0), P)
    roll = jax.jit(jax.vmap(rollout_step)).lower(ts.params, ts.eyes, ts.env_state, keys).compile()
    r_flops, r_bytes = cost_of(roll)
    r_whiles = roll.as_text().count(" while(")

    mb_size = ppo.batch_size // c.n_minibatches
    obs0 = jax.tree.map(lambda x: x[:, :1], ts.env_state.obs)  # (P, 1, ...)
    obs_mb = jax.tree.map(lambda x: jnp.repeat(x, mb_size, axis=1), obs0)
    act_dim = ppo.network.apply(jax.tree.map(lambda x: x[0], ts.params),
                                jax.tree.map(lambda x: x[0], ts.env_state.obs), jax.tree.map(lambda x: x[0], ts.eyes))[0].shape[-1]
    z = jnp.zeros((P, mb_size))
    mb = (obs_mb, jnp.zeros((P, mb_size, act_dim)), z, z, z + 1.0, z)

    def minibatch(params, opt_state, eyes, mb):
        fixed = {k: v for k, v in params.items() if k != "params"}
        p = {"params": params["params"]}
        (_, aux), grads = jax.value_and_grad(lambda p: ppo._loss({**p, **fixed}, eyes, mb), has_aux=True)(p)
        updates, opt_state = ppo.optimizer.update(grads, opt_state, p)
        return jax.tree.map(lambda a, b: a + b, p, updates), opt_state, aux

    upd = jax.jit(jax.vmap(minibatch)).lower(ts.params, ts.opt_state, ts.eyes, mb).compile()
    u_flops, u_bytes = cost_of(upd)
    n_upd = c.n_epochs * c.n_minibatches
    return {"rollout_step": {"flops": r_flops, "bytes": r_bytes, "while_loops_in_hlo": r_whiles},
            "minibatch_update": {"flops": u_flops, "bytes": u_bytes, "minibatch_size": mb_size},
            "per_iteration": {"flops": c.n_steps * r_flops + n_upd * u_flops,
                              "bytes": c.n_steps * r_bytes + n_upd * u_bytes},
            "scaling": f"n_steps ({c.n_steps}) x rollout step + n_epochs*n_minibatches ({n_upd}) x minibatch"}


def timed(fn, repeats):
    import jax

    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    args = parse(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = args.platform
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax
    import jax.numpy as jnp

    import aci_jax
    from aci_jax.evo.run import build_evolution, individual_seed

    info = machine_info(pops=args.pops, iters=args.iters, exp=args.exp, overrides=args.overrides)
    cfg = aci_jax.load_config(args.exp, list(args.overrides))
    evo = build_evolution(cfg)
    tr = evo.trainer
    ppo = tr.ppo
    K = args.iters
    steps_ind = K * ppo.batch_size
    eval_steps_ind = int(evo.cfg.train.get("eval_envs") or evo.cfg.env.n_envs) * int(evo.cfg.env.max_episode_steps)
    info["settings"] = {"n_envs": ppo.n_envs, "n_steps": int(ppo.cfg.n_steps), "n_minibatches": int(ppo.cfg.n_minibatches),
                        "n_epochs": int(ppo.cfg.n_epochs), "batch_size": ppo.batch_size, "K": K,
                        "max_pixels": int(evo.cfg.env.render.max_pixels),
                        "train_steps_per_individual": steps_ind, "eval_steps_per_individual_max": eval_steps_ind}
    print(f"[evo_throughput] {info['cpu']} ({info['cores']} cores, {info['platform']}), load {info['load_avg_start']}")
    print(f"  settings {info['settings']}")

    seg1 = jax.jit(lambda m: tr.segment(m, K))
    init1 = jax.jit(tr.init)
    rows, costs = [], None
    for P in args.pops:
        eyes = individuals(evo, P, args.sigma, args.seed)
        seeds = jnp.asarray([individual_seed(args.seed, 0, i) for i in range(P)], jnp.int32)
        members = jax.jit(jax.vmap(tr.init))(seeds, eyes)
        segP = jax.jit(jax.vmap(lambda m: tr.segment(m, K)))
        t = time.perf_counter()
        compiled = segP.lower(members).compile()
        compile_pop = time.perf_counter() - t
        mem = compiled.memory_analysis()
        arg_b, tmp_b, out_b = (int(getattr(mem, a, 0) or 0) for a in
                               ("argument_size_in_bytes", "temp_size_in_bytes", "output_size_in_bytes"))
        jax.block_until_ready(compiled(members))  # warm
        t_pop = timed(lambda: compiled(members), args.repeats)

        singles = [init1(seeds[i], jax.tree.map(lambda x: x[i], eyes)) for i in range(P)]
        jax.block_until_ready(seg1(singles[0]))  # compile (same shapes for every individual)

        def sequential():
            return [seg1(m) for m in singles]

        t_seq = timed(sequential, args.repeats)
        row = {"population": P, "eyes": [describe(eyes, i) for i in range(P)],
               "compile_population_s": compile_pop, "population_s": t_pop, "sequential_s": t_seq,
               "population_env_steps_per_s": P * steps_ind / t_pop, "sequential_env_steps_per_s": P * steps_ind / t_seq,
               "ratio_population_over_sequential": t_seq / t_pop,
               "memory_bytes": {"argument": arg_b, "temp": tmp_b, "output": out_b},
               "memory_per_individual_bytes": (arg_b + tmp_b) / P}
        rows.append(row)
        print(f"  P={P:3d}: population {t_pop:7.2f} s ({row['population_env_steps_per_s']:8.0f} steps/s), sequential "
              f"{t_seq:7.2f} s ({row['sequential_env_steps_per_s']:8.0f} steps/s), ratio {row['ratio_population_over_sequential']:.2f}x, "
              f"mem/ind {row['memory_per_individual_bytes'] / 2**20:.1f} MiB", flush=True)
        if P == max(args.pops):
            lc = loop_costs(tr, members, P)
            # whole-segment numbers as XLA reports them (loop bodies once), for reference
            seg_flops, seg_bytes = cost_of(compiled)
            lc["segment_as_reported"] = {"flops": seg_flops, "bytes": seg_bytes,
                                         "note": "while/scan bodies counted once: not per-iteration"}
            per_it = lc["per_iteration"]
            steps_it = P * ppo.batch_size
            f_step, b_step = per_it["flops"] / steps_it, per_it["bytes"] / steps_it
            t_step = max(f_step / H200["flops_fp32"], b_step / H200["hbm_bytes_per_s"])
            mem_ind = row["memory_per_individual_bytes"]
            fit = int(H200["hbm_bytes"] // mem_ind)
            costs = {"population": P, **lc, "flops_per_env_step": f_step, "bytes_per_env_step": b_step,
                     "flops_per_individual_iteration": per_it["flops"] / P, "bytes_per_individual_iteration": per_it["bytes"] / P,
                     "arithmetic_intensity": f_step / b_step if b_step else None,
                     "h200_assumed_peaks": H200, "h200_bound": "compute" if f_step / H200["flops_fp32"] >= b_step / H200["hbm_bytes_per_s"] else "memory",
                     "h200_roofline_env_steps_per_s": 1.0 / t_step,
                     "h200_population_fits_141GB": fit,
                     "h200_population_fits_note": f"at n_envs={ppo.n_envs} per individual, memory of the CPU compile",
                     "targets": {"paper_16x50x1M_per_hour_env_steps_per_s": TARGET_PAPER, "one_million": TARGET_1M},
                     "roofline_over_paper_target": (1.0 / t_step) / TARGET_PAPER,
                     "roofline_over_1M": (1.0 / t_step) / TARGET_1M,
                     "paper_evolution_hours_at_roofline": 16 * 50 * 1e6 * t_step / 3600.0}

    info["rows"] = rows
    info["cost"] = costs
    info["load_avg_end"] = os.getloadavg()

    print("\n| P | population s | sequential s | pop steps/s | seq steps/s | pop/seq | MiB/ind |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['population']} | {r['population_s']:.2f} | {r['sequential_s']:.2f} | {r['population_env_steps_per_s']:.0f} | "
              f"{r['sequential_env_steps_per_s']:.0f} | {r['ratio_population_over_sequential']:.2f}x | "
              f"{r['memory_per_individual_bytes'] / 2**20:.1f} |")
    if costs:
        c = costs
        print(f"\ncost (P={c['population']}, per iteration = {c['scaling']}; rollout-step HLO while loops: "
              f"{c['rollout_step']['while_loops_in_hlo']}):")
        print(f"  FLOPs/env-step {c['flops_per_env_step']:.3g}, bytes/env-step {c['bytes_per_env_step']:.3g} "
              f"(intensity {c['arithmetic_intensity']:.2f} FLOP/B); per individual-iteration "
              f"{c['flops_per_individual_iteration']:.3g} FLOPs, {c['bytes_per_individual_iteration']:.3g} B")
        print(f"  H200 roofline (assumed 67 TFLOP/s FP32, 4.8 TB/s): {c['h200_bound']}-bound, "
              f"{c['h200_roofline_env_steps_per_s']:.3g} env-steps/s = {c['roofline_over_paper_target']:.1f}x the paper "
              f"target ({TARGET_PAPER:.0f}/s), {c['roofline_over_1M']:.2f}x 1M/s; 16x50x1M in "
              f"{c['paper_evolution_hours_at_roofline']:.2f} h; population fitting 141 GB: {c['h200_population_fits_141GB']}")
    print(f"load average at end: {info['load_avg_end']}")
    Path(args.out).write_text(json.dumps(info, indent=1, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
