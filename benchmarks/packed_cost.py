"""What one individual costs in the buffer and the packed pixel layout (`env.render.max_pixels`).

One 1×50 flatland eye (ACI's 50-pixel budget) on detection, under static maxima an evolution with
that budget needs: up to 50 eyes, up to 50 pixels a side. Cases:
  * buffer: max_eyes=50, max_resolution=50 — every individual renders and observes 50·50·50 pixels;
  * packed: the same maxima plus max_pixels=50 — 50 pixel slots, same network parameters;
  * packed 50x1: max_width=50, max_height=1 too (a flatland-only search: a small first kernel);
  * own buffer: the eye's own buffer (max_eyes=1, 50×1), what a solo run of this eye pays.
For each: env-steps/s of `jit(vmap(env.step))` and of `jit(PPO.iteration)` (compile excluded, best of
`--repeats` timings), and XLA's compiled cost (`.lower(...).compile().cost_analysis()`: FLOPs, bytes
accessed; `.memory_analysis()`: argument, output and temporary bytes). XLA counts a loop body (the
rollout's `lax.scan`, the physics sub-steps) once, not once per trip: its FLOPs compare the cases,
they are not totals.

    python benchmarks/packed_cost.py                       # CPU, ~10 min on 2 shared cores
    python benchmarks/packed_cost.py --cases packed --n-envs 4 --repeats 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

CASES = {
    "buffer": ["env.render.max_eyes=50", "env.render.max_resolution=50"],
    "packed": ["env.render.max_eyes=50", "env.render.max_resolution=50", "env.render.max_pixels=50"],
    "packed 50x1": ["env.render.max_eyes=50", "env.render.max_resolution=50", "env.render.max_width=50",
                    "env.render.max_height=1", "env.render.max_pixels=50"],
    "own buffer": ["env.render.max_eyes=1", "env.render.max_width=50", "env.render.max_height=1"],
}
EYE = ["env.agents.agent.eyes.num_eyes=[1,1]", "env.agents.agent.eyes.resolution=[50,1]",
       "env.agents.agent.eyes.fov=[90,10]"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {list(CASES)}")
    ap.add_argument("--n-envs", type=int, default=4)
    ap.add_argument("--n-steps", type=int, default=8, help="PPO rollout length (trainer.n_steps)")
    ap.add_argument("--frame-stack", type=int, default=2)
    ap.add_argument("--env-steps", type=int, default=5, help="vmapped env steps per timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--platform", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).with_name("packed_cost.json")))
    a = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", a.platform)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax
    import jax.numpy as jnp

    import aci_jax
    from aci_jax.rl import PPO
    from machine import machine_info

    common = [*EYE, f"env.n_envs={a.n_envs}", f"env.frame_stack={a.frame_stack}", f"trainer.n_steps={a.n_steps}",
              "trainer.n_minibatches=2", "trainer.n_epochs=1"]

    def compiled_cost(fn, *args) -> tuple:
        t0 = time.perf_counter()
        c = jax.jit(fn).lower(*args).compile()
        compile_s = time.perf_counter() - t0
        cost = c.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        m = c.memory_analysis()
        return c, {"compile_s": compile_s, "flops": float(cost.get("flops", -1)),
                   "bytes_accessed": float(cost.get("bytes accessed", -1)),
                   "argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
                   "temp_bytes": m.temp_size_in_bytes}

    def best(fn, repeats) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = []
    for name in a.cases.split(","):
        cfg = aci_jax.load_config("detection", [*common, *CASES[name]])
        env = aci_jax.make_env(cfg)
        b = env.buffer
        n = a.n_envs
        states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
        actions = jnp.zeros((n, env.action_size))
        step, step_cost = compiled_cost(jax.vmap(env.step), states, actions)

        def run_env():
            s = states
            for _ in range(a.env_steps):
                s = step(s, actions)
            return s

        jax.block_until_ready(run_env())
        env_sps = n * a.env_steps / best(run_env, a.repeats)

        ppo = PPO(env, cfg.trainer)
        ts = ppo.jit_init(jax.random.PRNGKey(1))
        n_params = sum(x.size for x in jax.tree.leaves(ts.params))
        it, it_cost = compiled_cost(ppo.iteration, ts)
        jax.block_until_ready(it(ts))
        ppo_sps = ppo.batch_size / best(lambda: it(ts), a.repeats)
        row = {"case": name, "overrides": CASES[name], "observed_pixels": b.pixels,
               "rays_per_env_step": b.pixels * b.supersample ** 2,
               "obs_floats_per_env": sum(int(jnp.prod(jnp.array(s))) for s in env.observation_size.values()),
               "params": int(n_params), "env_steps_per_s": env_sps, "env_step": step_cost,
               "ppo_env_steps_per_s": ppo_sps, "ppo_iteration": it_cost}
        rows.append(row)
        print(json.dumps(row), flush=True)

    out = {"machine": machine_info(), "settings": {**vars(a), "common_overrides": common}, "rows": rows}
    Path(a.out).write_text(json.dumps(out, indent=1))
    mb = lambda x: f"{x / 2**20:,.1f}"
    print("\n| case | pixels observed | rays/step | params | env-steps/s | step GFLOP | step MB accessed "
          "| step temp MB | PPO env-steps/s | iteration GFLOP | iteration MB accessed | iteration arg+temp MB |")
    print("|" + " --- |" * 12)
    for r in rows:
        s, i = r["env_step"], r["ppo_iteration"]
        print(f"| {r['case']} | {r['observed_pixels']:,} | {r['rays_per_env_step']:,} | {r['params']:,} "
              f"| {r['env_steps_per_s']:,.0f} | {s['flops'] / 1e9:,.3f} | {mb(s['bytes_accessed'])} "
              f"| {mb(s['temp_bytes'])} | {r['ppo_env_steps_per_s']:,.0f} | {i['flops'] / 1e9:,.3f} "
              f"| {mb(i['bytes_accessed'])} | {mb(i['argument_bytes'] + i['temp_bytes'])} |")


if __name__ == "__main__":
    main()
