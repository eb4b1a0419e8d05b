"""Where a generation's training time goes, per env step (issue 23, part 2).

A population of fixed flatland layouts (the landscape's catalogue, cycled to `--population`),
decoded by the evolution's genome into the population's static maxima (packed layout), trained by
the evolution's own `PopulationTrainer`. Each piece is compiled alone as `jit(vmap(piece))` over the
population, run once to compile, then timed `--repeats` times on the same (warmed-up) state; the
table gives the median wall µs per training env step (P × n_envs × n_steps steps per iteration) and
its share of one PPO iteration:

- iteration: `PPO.iteration` (rollout, observation statistics, GAE and n_epochs of minibatch updates);
- rollout: `PPO._rollout` (n_steps of policy forward + sampling + `env.step`, vmapped over envs);
- env step: n_steps of `env.step` alone on fixed random actions, split into physics (`frame_skip`
  `mjx.step`s), rendering (the step's observation, `_observe`: the packed layout's pixels), the auto-reset's new episode (`_new_episode`, which
  under vmap is sampled for every env at every step) and the rest (task, hooks, observation);
- policy forward: the rollout minus its env steps;
- update: `PPO._update` on the rollout's trajectory (GAE + epochs × minibatches), and GAE alone;
- evaluation: one periodic evaluation (`train.eval_envs` envs, one episode per maze), per training env
  step at `train.eval_every` iterations between evaluations;
- segment: the evolution's compiled segment program (eval_every iterations + evaluation); its
  remainder after iterations and evaluation is the bookkeeping inside it.

    python benchmarks/train_breakdown.py                          # detection, population 8
    python benchmarks/train_breakdown.py --exp navigation --population 8
    python benchmarks/train_breakdown.py --quick                  # tiny sizes: checks the code (< 3 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
PIECES = ("iteration", "rollout", "env_step", "physics", "render", "new_episode", "update", "gae", "evaluation",
          "segment")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", default="detection")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--layouts", default="single,detection,navigation,one_wide,few_wide",
                   help="landscape.catalogue names, cycled to the population size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pieces", type=lambda t: t.split(","), default=list(PIECES),
                   help="a subset prints only those pieces' lines (the table needs all)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (checks the code, not the speed)")
    p.add_argument("--out", type=Path, default=HERE / "train_breakdown.json")
    return p.parse_args(argv)


def population(args):
    """(trainer, config, stacked raw-decoded eyes, layout names) of the population."""
    import aci_jax
    from aci_jax.evo.run import build_evolution

    quick = ["env.n_envs=4", "trainer.n_steps=8", "trainer.n_minibatches=2", "trainer.n_epochs=1",
             "train.eval_envs=4", "env.max_episode_steps=16", "env.render.supersample=1"] if args.quick else []
    cfg = aci_jax.load_config(args.exp, [*quick, *args.override, f"evo.population_size={args.population}"])
    evo = build_evolution(cfg)
    names = [n for n in args.layouts.split(",") if n]
    raws = []
    for n in names:
        genes = dict(cfg.landscape.catalogue[n])
        raws.append([g.coordinate(float(genes[g.name])) for g in evo.genome.genes])
    order = [names[i % len(names)] for i in range(args.population)]
    raw = jnp.asarray([raws[names.index(n)] for n in order], jnp.float32)
    return evo.trainer, evo.cfg, jax.vmap(evo.genome.decode)(raw), order


def timed(fn, *a, repeats: int) -> tuple[float, float, object]:
    """(compile + first run s, median run s, output)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*a))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        runs.append(time.perf_counter() - t0)
    return first, statistics.median(runs), out


def pieces(tr, cfg):
    """name -> function of one member's TrainState (or its pieces) to vmap over the population."""
    from mujoco import mjx

    from aci_jax.rl.evaluation import selection_key
    from aci_jax.rl.ppo import gae

    ppo, env = tr.ppo, tr.ppo.env
    c = ppo.cfg

    def actions(key):
        return jax.random.uniform(key, (c.n_steps, ppo.n_envs, env.action_size), minval=-1, maxval=1)

    def env_steps(ts):
        step = lambda s, a: (jax.vmap(env.step)(s, a), None)
        return jax.lax.scan(step, ts.env_state, actions(ts.rng))[0]  # all of it: XLA drops what no output needs

    def physics(ts):  # the same random actions as env_step: a moving agent takes more solver iterations
        sub = lambda d, _: (mjx.step(env.mx, d), None)
        one = lambda d, a: jax.lax.scan(sub, env._control(d, a), None, length=env.frame_skip)[0]
        return jax.lax.scan(lambda d, a: (jax.vmap(one)(d, a), None), ts.env_state.pipeline_state,
                            actions(ts.rng))[0]

    def render(ts):
        s = ts.env_state
        no_action = jnp.zeros(env.action_size)
        # the step's own observation (`_observe`: the packed layout's render_packed, or render_eyes)
        draw = lambda d, info: sum(jnp.sum(v) for v in env._observe(d, info, no_action, jnp.bool_(False)).values())
        def one(acc, _):  # each draw depends on the last (a 1e-12 m nudge), so XLA cannot hoist it out
            d = s.pipeline_state.replace(qpos=s.pipeline_state.qpos + 1e-12 * acc.mean())
            return acc + jax.vmap(draw)(d, s.info).mean(), None

        return jax.lax.scan(one, jnp.float32(0), None, length=c.n_steps)[0]

    def new_episode(ts):  # the auto-reset's fresh episode, sampled for every env at every step
        keys = jax.random.split(ts.rng, c.n_steps * ppo.n_envs).reshape(c.n_steps, ppo.n_envs, -1)

        def one(acc, k):
            d, ep = jax.vmap(env._new_episode, in_axes=(0, None))(k, jnp.int32(0))
            return acc + d.qpos.mean() + d.mocap_pos.mean() + ep.wall_material.mean(), None

        return jax.lax.scan(one, jnp.float32(0), keys)[0]

    def rollout(ts):
        return ppo._rollout(ts.params, ts.eyes, ts.env_state, ts.rng)

    def update(ts, traj):
        _, _, last = ppo.network.apply(ts.params, ts.env_state.obs, ts.eyes)
        return ppo._update(ts.params, ts.opt_state, ts.eyes, traj, last, ts.rng)[0]

    def gae_only(ts, traj):
        return gae(traj.reward, traj.value, traj.done, traj.truncation, traj.value[-1], c.gamma, c.gae_lambda)

    def evaluation(ts):
        return tr.evaluate(ts.params, ts.eyes, selection_key(0))

    return {"iteration": lambda ts: ppo.iteration(ts), "rollout": rollout, "env_step": env_steps,
            "physics": physics, "render": render, "new_episode": new_episode, "update": update, "gae": gae_only, "evaluation": evaluation}


def measure(args) -> dict:
    tr, cfg, eyes, order = population(args)
    ppo = tr.ppo
    P, c = args.population, ppo.cfg
    steps = P * ppo.n_envs * c.n_steps  # training env steps per iteration of the population
    eval_every = int(cfg.train.get("eval_every") or 1)
    seeds = jnp.arange(P, dtype=jnp.int32)
    m = jax.jit(jax.vmap(tr.init))(seeds, eyes)
    ts = m.ts
    fns = pieces(tr, cfg)
    rows, traj = {}, None
    for name in PIECES[:-1]:
        if name not in args.pieces and not (name == "rollout" and {"update", "gae"} & set(args.pieces)):
            continue
        fn = fns[name]
        if name in ("update", "gae"):
            first, run, _ = timed(jax.jit(jax.vmap(fn)), ts, traj, repeats=args.repeats)
        else:
            first, run, out = timed(jax.jit(jax.vmap(fn)), ts, repeats=args.repeats)
            if name == "rollout":
                traj = out[1]
        per = run / steps if name != "evaluation" else run / (steps * eval_every)
        rows[name] = {"compile_s": first - run, "run_s": run, "us_per_env_step": 1e6 * per}
        print(f"[breakdown] {name:10s} compile {first - run:6.1f} s, run {run:8.3f} s, "
              f"{1e6 * per:8.2f} µs per training env step", flush=True)
    if "segment" not in args.pieces:
        return {"pieces": rows}
    seg = jax.jit(jax.vmap(lambda m: tr.segment(m, eval_every)))
    first, run, _ = timed(seg, m, repeats=max(1, args.repeats - 1))
    rows["segment"] = {"compile_s": first - run, "run_s": run, "us_per_env_step": 1e6 * run / (steps * eval_every)}
    print(f"[breakdown] segment    compile {first - run:6.1f} s, run {run:8.3f} s ({eval_every} iterations + evaluation)")
    us = {k: v["us_per_env_step"] for k, v in rows.items()}
    us["policy_forward"] = us["rollout"] - us["env_step"]
    us["env_rest"] = us["env_step"] - us["physics"] - us["render"] - us["new_episode"]
    us["update_without_gae"] = us["update"] - us["gae"]
    us["iteration_rest"] = us["iteration"] - us["rollout"] - us["update"]
    us["segment_rest"] = us["segment"] - us["iteration"] - us["evaluation"]
    return {"exp": args.exp, "population": P, "layouts": order, "n_envs": ppo.n_envs, "n_steps": c.n_steps,
            "n_epochs": c.n_epochs, "n_minibatches": c.n_minibatches, "eval_every": eval_every,
            "eval_envs": int(cfg.train.get("eval_envs") or ppo.n_envs), "pieces": rows, "us_per_env_step": us,
            "env_steps_per_s": 1e6 / us["segment"], "quick": args.quick, "overrides": args.override}


TABLE = [("physics (frame_skip × mjx.step)", "physics"), ("rendering (ray-cast eyes)", "render"),
         ("auto-reset's new episode (every env, every step)", "new_episode"),
         ("rest of env.step (task, hooks, observation)", "env_rest"), ("policy forward + sampling in the rollout", "policy_forward"),
         ("GAE", "gae"), ("PPO update (epochs × minibatches)", "update_without_gae"),
         ("rest of the iteration (obs statistics, bootstrap value)", "iteration_rest"),
         ("periodic evaluation (amortised)", "evaluation"), ("rest of the segment program", "segment_rest")]


def print_table(r: dict) -> None:
    us, total = r["us_per_env_step"], r["us_per_env_step"]["segment"]
    print(f"\n{r['exp']}, population {r['population']} ({', '.join(sorted(set(r['layouts'])))}), {r['n_envs']} envs × "
          f"{r['n_steps']} steps, {r['n_epochs']} epochs × {r['n_minibatches']} minibatches, evaluation every "
          f"{r['eval_every']} iterations ({r['eval_envs']} envs)")
    print(f"{'piece':58s} {'µs/env-step':>12s} {'share':>7s}")
    for label, k in TABLE:
        print(f"{label:58s} {us[k]:12.2f} {us[k] / total:7.1%}")
    print(f"{'segment (all of it)':58s} {total:12.2f} {1:7.1%}   = {r['env_steps_per_s']:,.0f} env-steps/s")


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    r = measure(args)
    if set(PIECES) - set(args.pieces):
        return r
    r.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), wall_s=time.perf_counter() - t0,
             devices=[str(d) for d in jax.devices()], load_avg=list(np.round(__import__("os").getloadavg(), 2)))
    print_table(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=1))
    print(f"\nwrote {args.out}")
    return r


if __name__ == "__main__":
    main()
