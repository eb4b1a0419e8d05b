"""A GPU roofline estimate of training env-steps/s that counts every loop's trip count.

XLA's `cost_analysis()` counts a while loop's (and a scan's) body once, whatever its trip count. A
training env step holds: the frame-skip scan of MJX sub-steps, in each the constraint solver's while
loop (up to `env.solver_iterations` trips) with its line-search scan (up to `env.ls_iterations`), and
the renderer's ray walk (a while loop over maze cells, up to `rows + cols + 2` trips, running until the
batch's last ray ends). So the step is compiled with those loops unrolled to chosen trip counts — scans
fully (`unroll=True`), while loops into k copies of their body (`jax.lax.while_loop` replaced during
tracing, per caller: MJX's solver and the renderer's walk separately) — at (solver k, walk k) = (1, 1),
(2, 1) and (1, 2): the differences are one solver iteration (all sub-steps) and one walk step, the rest
is the step outside those loops. Then per env step

    cost(iters, walk) = rest + iters · solver + walk · walk_step

over a range of trip counts (solver 1 … its maximum; walk: the OPEN maze's diagonal in cells … its
maximum), plus the policy forward and the PPO update per env step (compiled alone: no loops), and the
GAE scan unrolled. FLOPs and bytes are the CPU compile's (its fusions: a GPU's will differ).

Roofline: time per env-step = max(FLOPs / (f · peak FLOP/s), bytes / (f · peak bandwidth)) with ASSUMED
FP32 peaks (no tensor cores; vendors' datasheets) and f the share of peak a real kernel reaches (0.1 …
0.5). H100 SXM: 67 TFLOP/s, 3.35 TB/s; H200: 67 TFLOP/s, 4.8 TB/s.

    PYTHONPATH=. python benchmarks/roofline.py [--n-envs 64] [--out benchmarks/roofline.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GPUS = {"H100 SXM": {"flops": 67e12, "bandwidth": 3.35e12}, "H200": {"flops": 67e12, "bandwidth": 4.8e12}}
SHARES = (0.1, 0.5)  # share of peak a real kernel reaches: (pessimistic, optimistic)
CALLERS = {"solver": "mujoco.mjx._src.solver", "walk": "aci_jax.eyes.render"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="detection")
    p.add_argument("--n-envs", type=int, default=64)
    p.add_argument("--overrides", nargs="*", default=["env.agents.agent.eyes.resolution=[50,1]",
                                                      "env.agents.agent.eyes.fov=[100.0,45.0]", "env.render.max_pixels=50"])
    p.add_argument("--out", type=Path, default=HERE / "roofline.json")
    return p.parse_args(argv)


@contextlib.contextmanager
def unrolled(k: dict):
    """While loops called from CALLERS' modules become k[caller] copies of their body (cond ignored:
    the cost of k trips); every scan is unrolled fully."""
    import jax

    real_while, real_scan = jax.lax.while_loop, jax.lax.scan

    def while_loop(cond, body, init):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        for name, module in CALLERS.items():
            if caller.startswith(module):
                val = init
                for _ in range(k[name]):
                    val = body(val)
                return val
        return real_while(cond, body, init)

    def scan(f, init, xs=None, length=None, **kw):
        kw.pop("unroll", None)
        return real_scan(f, init, xs, length=length, unroll=True, **kw)

    jax.lax.while_loop, jax.lax.scan = while_loop, scan
    try:
        yield
    finally:
        jax.lax.while_loop, jax.lax.scan = real_while, real_scan


def cost(compiled) -> tuple[float, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


def env_step_cost(env, n: int, k: dict) -> tuple[float, float, float]:
    """(flops, bytes, compile s) of one vmapped env step over n envs, loops unrolled to k."""
    import jax

    state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    actions = jax.numpy.zeros((n, env.action_size))
    t = time.perf_counter()
    with unrolled(k):
        compiled = jax.jit(jax.vmap(env.step)).lower(state, actions).compile()
    f, b = cost(compiled)
    return f / n, b / n, time.perf_counter() - t


def main(argv=None) -> dict:
    args = parse(argv)
    import jax

    import aci_jax
    from aci_jax.evo.population import PopulationTrainer
    from aci_jax.rl.built import build

    cfg = aci_jax.load_config(args.exp, [*args.overrides, f"env.n_envs={args.n_envs}", "env.render.supersample=2"])
    b = build(cfg)
    env, ppo = b.ppo.env, b.ppo
    c = {}
    for name, k in (("base", {"solver": 1, "walk": 1}), ("solver2", {"solver": 2, "walk": 1}),
                    ("walk2", {"solver": 1, "walk": 2})):
        c[name] = env_step_cost(env, args.n_envs, k)
        print(f"[roofline] env step, loops unrolled {k}: {c[name][0] / 1e6:.2f} MFLOP, {c[name][1] / 1e6:.2f} MB "
              f"per env step (compile {c[name][2]:.0f} s)", flush=True)
    solver = tuple(c["solver2"][i] - c["base"][i] for i in range(2))
    walk = tuple(c["walk2"][i] - c["base"][i] for i in range(2))
    rest = tuple(c["base"][i] - solver[i] - walk[i] for i in range(2))
    max_walk = int(env.scene.max_steps)  # rows + cols + 2 of the largest maze
    rows, cols = (int(x) for x in env.world.mazes[0].maze.shape)
    typ_walk = max(1, math.ceil(math.hypot(rows, cols)))  # a ray crossing the maze's diagonal
    iters = (1, int(cfg.env.solver_iterations))
    # policy forward (rollout) and PPO's update, per env step (no loops in either when compiled alone)
    from evo_throughput import loop_costs

    tr = PopulationTrainer(ppo, b.eval_env, 4, 0)
    members = jax.jit(jax.vmap(tr.init))(jax.numpy.zeros(1, jax.numpy.int32),
                                         jax.tree.map(lambda x: x[None], env.default_eyes))
    lc = loop_costs(tr, members, 1)
    n_upd = ppo.cfg.n_epochs * ppo.cfg.n_minibatches
    update = (n_upd * lc["minibatch_update"]["flops"] / ppo.batch_size, n_upd * lc["minibatch_update"]["bytes"] / ppo.batch_size)
    ts = jax.tree.map(lambda x: x[0], members.ts)  # one individual: its params and n_envs env states
    fwd = jax.jit(lambda p, obs, e: ppo.network.apply(p, obs, e)).lower(ts.params, ts.env_state.obs, ts.eyes).compile()
    policy = tuple(x / args.n_envs for x in cost(fwd))  # the rollout's policy forward, per env step

    def per_step(it, wk):
        return tuple(rest[i] + it * solver[i] + wk * walk[i] + policy[i] + update[i] for i in range(2))

    lo_cost, hi_cost = per_step(iters[0], typ_walk), per_step(iters[1], max_walk)
    estimate = {}
    for gpu, peak in GPUS.items():
        def rate(cost_, share):
            t = max(cost_[0] / (share * peak["flops"]), cost_[1] / (share * peak["bandwidth"]))
            return 1.0 / t, "compute" if cost_[0] / peak["flops"] >= cost_[1] / peak["bandwidth"] else "memory"

        hi_rate, hi_bound = rate(lo_cost, SHARES[1])
        lo_rate, lo_bound = rate(hi_cost, SHARES[0])
        estimate[gpu] = {"env_steps_per_s_low": lo_rate, "env_steps_per_s_high": hi_rate,
                         "bound_low": lo_bound, "bound_high": hi_bound, "assumed_peaks": peak}
        print(f"[roofline] {gpu}: {lo_rate:,.0f} … {hi_rate:,.0f} training env-steps/s (estimate; bound by "
              f"{lo_bound} … {hi_bound})")
    parts = {"rest_of_env_step": rest, "solver_iteration_all_substeps": solver, "walk_step": walk,
             "policy_forward": policy, "ppo_update": update}
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "exp": args.exp, "overrides": args.overrides,
           "n_envs": args.n_envs, "frame_skip": int(cfg.env.frame_skip),
           "solver_iterations": iters, "ls_iterations": int(cfg.env.ls_iterations),
           "walk_trips": {"typical_diagonal": typ_walk, "max": max_walk, "maze_cells": [rows, cols]},
           "per_env_step": {k: {"flops": v[0], "bytes": v[1]} for k, v in parts.items()},
           "per_env_step_total": {"low_trips": {"flops": lo_cost[0], "bytes": lo_cost[1]},
                                  "high_trips": {"flops": hi_cost[0], "bytes": hi_cost[1]}},
           "shares_of_peak": SHARES, "estimate": estimate,
           "compile_s": {k: v[2] for k, v in c.items()}}
    args.out.write_text(json.dumps(out, indent=1))
    print("\n| part (per env step) | MFLOP | MB |\n|---|---:|---:|")
    for k, v in parts.items():
        print(f"| {k} | {v[0] / 1e6:.3f} | {v[1] / 1e6:.3f} |")
    print(f"| total, {iters[0]} solver iteration, {typ_walk} walk steps | {lo_cost[0] / 1e6:.3f} | {lo_cost[1] / 1e6:.3f} |")
    print(f"| total, {iters[1]} solver iterations, {max_walk} walk steps | {hi_cost[0] / 1e6:.3f} | {hi_cost[1] / 1e6:.3f} |")
    return out


if __name__ == "__main__":
    main()
