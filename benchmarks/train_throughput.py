"""Training throughput and learning curve: aci_jax's PPO against brax's own PPO trainer on the same env.

Both train on detection with one small eye (`--resolution`, `--supersample`): aci_jax's `PPO` with the
`flatten` encoder, and `brax.training.agents.ppo.train` on `BraxEnv` (`aci_jax/envs/brax_env.py`: the
env as a brax Env with the flattened obs dict as its observation, the env's own auto-reset, brax's
`wrap_env=False`). Both therefore see the same raw pixels. Settings are equal:
  * rollout: n_envs envs x n_steps (brax: unroll_length = n_steps and batch_size * num_minibatches =
    n_envs, so one brax training step is one aci_jax iteration);
  * updates: n_epochs (num_updates_per_batch) x n_minibatches minibatches of n_envs*n_steps/n_minibatches
    transitions; learning rate (constant), entropy cost, gamma, GAE lambda, clip range, value-loss
    weight (brax halves its coefficient, so it gets 2 x vf_coef), global-norm clip, advantage
    normalisation, no observation normalisation, reward scale 1;
  * network: tanh MLPs (`trainer.network.hidden`) for policy and value, orthogonal init (gain √2, policy
    mean 0.01), Gaussian policy with a state-independent std (init exp(log_std_init)), actions clipped
    by the env (brax `distribution_type='normal'`; `--brax-distribution tanh_normal` gives brax's default
    tanh-squashed Gaussian with a state-dependent std instead).
Differences that remain are brax's design: brax recomputes GAE in every minibatch with the current
value net over whole n_steps sequences and shuffles sequences, aci_jax computes GAE once per rollout
and shuffles transitions; Adam eps 1e-8 (brax) vs 1e-5; the value output layer's init gain √2 vs 1.

Two parts (`--parts`):
  * throughput, per `--n-envs`: env-steps/s of steady-state training (rollout + updates), compile
    excluded. brax: one `train()` with `--windows` + 1 training epochs and no evals; brax times each
    epoch itself (`training/sps`); the first epoch compiles and is dropped. aci_jax: after one
    compiling iteration, a window of `jit_iteration` calls run from brax's progress callback after
    each later epoch, so the two trainers' windows alternate under the same load. A window is the
    same number of iterations for both, about `--window-steps` env steps. The fastest window counts.
  * learning, at `--learn-envs` for `--learn-steps` per seed (`--seeds`): the training-episode return
    (mean of the last 100 finished episodes, brax's training-log statistic) and, at `--eval-points`
    points, the deterministic return of each trainer's policy from one shared evaluation rollout
    (same env, same keys: one episode in each of `--eval-envs` envs).

Writes tables to stdout and JSON to `--out`.

    python benchmarks/train_throughput.py                         # CPU default (~15 min on 2 cores)
    python benchmarks/train_throughput.py --parts throughput --n-envs 16 --window-steps 4096   # smoke
    python benchmarks/train_throughput.py --platform cuda --n-envs 1024,4096,16384 \
        --window-steps 2000000 --learn-envs 1024 --learn-steps 5000000 --seeds 0,1,2   # on a GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

from machine import machine_info

PARTS = ("throughput", "learning")
BRAX_AXIS = "i"  # brax's pmap axis name; replicated arrays must carry it to match pmap's outputs


# -- command line ------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS), help="throughput,learning")
    p.add_argument("--platform", default="cpu", help="JAX platform (cpu, cuda)")
    p.add_argument("--resolution", type=int, default=4, help="eye pixels per side (one eye)")
    p.add_argument("--supersample", type=int, default=1, help="rays per pixel side")
    p.add_argument("--n-steps", type=int, default=128, help="rollout length (brax: unroll_length)")
    p.add_argument("--n-minibatches", type=int, default=16, help="must divide every n_envs (brax batch_size)")
    p.add_argument("--n-epochs", type=int, default=10, help="brax: num_updates_per_batch")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--brax-distribution", choices=("normal", "tanh_normal"), default="normal")
    p.add_argument("--n-envs", type=_ints, default=[16, 64, 256], help="throughput sweep")
    p.add_argument("--window-steps", type=int, default=16384, help="env steps per timing window")
    p.add_argument("--windows", type=int, default=2, help="timed windows per trainer and n_envs")
    p.add_argument("--learn-envs", type=int, default=32)
    p.add_argument("--learn-steps", type=int, default=131072, help="rounded up to whole eval intervals")
    p.add_argument("--seeds", type=_ints, default=[0, 1])
    p.add_argument("--eval-points", type=int, default=4, help="evaluations after the initial one")
    p.add_argument("--eval-envs", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "train_throughput.json")
    args = p.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; valid: {','.join(PARTS)}")
    for n in args.n_envs + [args.learn_envs]:
        if n % args.n_minibatches:
            p.error(f"n_envs {n} is not a multiple of --n-minibatches {args.n_minibatches}: brax's minibatches "
                    "hold whole env sequences (batch_size = n_envs / n_minibatches)")
    if args.windows < 1 or args.eval_points < 1:
        p.error("--windows and --eval-points must be >= 1")
    return args


# -- setup -------------------------------------------------------------------------------------------

def install_device_put_replicated() -> None:
    """brax 0.14's PPO calls `jax.device_put_replicated`, which JAX 0.10 removed (google/brax#671).
    Put back an equivalent: a leading device axis sharded like brax's pmap outputs, so the second
    training epoch reuses the first one's compilation."""
    import jax
    import numpy as np

    if hasattr(jax, "device_put_replicated"):
        return

    def device_put_replicated(tree, devices):
        devices = list(devices)
        sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (BRAX_AXIS,)),
                                              jax.sharding.PartitionSpec(BRAX_AXIS))
        stack = lambda x: jax.numpy.stack([jax.numpy.asarray(x)] * len(devices))
        return jax.tree.map(lambda x: jax.device_put(stack(x), sharding), tree)

    jax.device_put_replicated = device_put_replicated


def build_ppo(args, n_envs: int, total_steps: int):
    """aci_jax's PPO (flatten encoder) on detection with one `--resolution` eye at `n_envs` envs."""
    import aci_jax
    from aci_jax.rl.ppo import PPO

    r = args.resolution
    cfg = aci_jax.load_config("detection", [
        f"env.agents.agent.eyes.resolution=[{r},{r}]", f"env.render.supersample={args.supersample}",
        f"env.n_envs={n_envs}", f"trainer.n_steps={args.n_steps}", f"trainer.n_minibatches={args.n_minibatches}",
        f"trainer.n_epochs={args.n_epochs}", f"trainer.total_timesteps={total_steps}",
        "trainer.network.encoder=flatten", "env.agents.agent.heading=absolute", *args.override])
    ppo = PPO(aci_jax.make_env(cfg), cfg.trainer)
    if ppo.cfg.lr_schedule != "constant":
        raise SystemExit("trainer.lr_schedule must be 'constant': brax's PPO has no linear schedule")
    return ppo


def brax_network_factory(ppo, distribution: str):
    """brax's `make_ppo_networks` shaped like aci_jax's network (see the module docstring)."""
    import jax
    import flax.linen as nn
    from brax.training.agents.ppo import networks as ppo_networks

    net = ppo.cfg.network
    ortho = jax.nn.initializers.orthogonal
    return functools.partial(
        ppo_networks.make_ppo_networks, policy_hidden_layer_sizes=net.hidden, value_hidden_layer_sizes=net.hidden,
        activation=nn.tanh, distribution_type=distribution, noise_std_type="log",
        init_noise_std=math.exp(net.log_std_init),
        policy_network_kernel_init_fn=ortho, policy_network_kernel_init_kwargs={"scale": math.sqrt(2)},
        value_network_kernel_init_fn=ortho, value_network_kernel_init_kwargs={"scale": math.sqrt(2)},
        mean_kernel_init_fn=ortho, mean_kernel_init_kwargs={"scale": 0.01})


def brax_settings(ppo, args) -> dict:
    """`ppo.train` keyword arguments equal to aci_jax's trainer config (no evals, one device)."""
    c, n = ppo.cfg, ppo.n_envs
    return dict(
        wrap_env=False, num_envs=n, episode_length=ppo.env.max_steps, unroll_length=c.n_steps,
        batch_size=n // c.n_minibatches, num_minibatches=c.n_minibatches, num_updates_per_batch=c.n_epochs,
        learning_rate=c.learning_rate, entropy_cost=c.ent_coef, discounting=c.gamma, gae_lambda=c.gae_lambda,
        clipping_epsilon=c.clip_range, clipping_epsilon_value=c.clip_range_vf, vf_loss_coefficient=2 * c.vf_coef,
        max_grad_norm=c.max_grad_norm, normalize_advantage=c.normalize_advantage, normalize_observations=False,
        reward_scaling=1.0, max_devices_per_host=1, run_evals=False, num_eval_envs=n,
        network_factory=brax_network_factory(ppo, args.brax_distribution))


def brax_train(ppo, benv, args, num_timesteps: int, num_epochs: int, seed: int, **kw):
    """brax's PPO for `num_epochs` training epochs of equal length (each ends with the callbacks)."""
    from brax.training.agents.ppo import train as brax_ppo

    return brax_ppo.train(benv, num_timesteps=num_timesteps, num_evals=num_epochs + 1, seed=seed,
                          **brax_settings(ppo, args), **kw)


# -- throughput --------------------------------------------------------------------------------------

def window_iterations(ppo, args) -> int:
    return max(1, round(args.window_steps / ppo.batch_size))


def aci_windows(ppo, m: int):
    """Compile aci_jax's iteration (one call); then `window()` runs `m` more and returns env-steps/s."""
    import jax

    ts = ppo.jit_init(jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    ts = jax.block_until_ready(ppo.jit_iteration(ts)[0])
    first_s = time.perf_counter() - t0

    def window() -> float:
        nonlocal ts
        t0 = time.perf_counter()
        for _ in range(m):
            ts, _ = ppo.jit_iteration(ts)
        jax.block_until_ready(ts)
        return m * ppo.batch_size / (time.perf_counter() - t0)

    return first_s, window


def measure_throughput(ppo, benv, args) -> tuple[dict, dict]:
    """Both trainers' windows, interleaved so that both see the same load: brax trains `--windows` + 1
    epochs of m iterations (the first compiles); after each later one, its progress callback times one
    aci_jax window of m iterations. (aci_jax, brax) results; the fastest window of each counts."""
    m = window_iterations(ppo, args)
    aci_first_s, aci_window = aci_windows(ppo, m)
    brax_sps, aci_sps = [], []

    def progress(step, metrics):
        brax_sps.append(float(metrics["training/sps"]))
        if len(brax_sps) > 1:
            aci_sps.append(aci_window())

    epochs = args.windows + 1
    brax_train(ppo, benv, args, epochs * m * ppo.batch_size, epochs, seed=0, progress_fn=progress)
    brax_first_s = m * ppo.batch_size / brax_sps.pop(0)
    result = lambda sps, compile_s: {"env_steps_per_s": max(sps), "all_env_steps_per_s": sps,
                                     "iterations_per_window": m, "compile_s": compile_s}
    return (result(aci_sps, aci_first_s - ppo.batch_size / max(aci_sps)),
            result(brax_sps, brax_first_s - m * ppo.batch_size / max(brax_sps)))


def run_throughput(args) -> list[dict]:
    from aci_jax.envs.brax_env import BraxEnv

    rows = []
    print(f"\nthroughput (env-steps/s of training, compile excluded; best of {args.windows} windows)")
    print_header(THROUGHPUT_COLUMNS)
    for n in args.n_envs:
        ppo = build_ppo(args, n, total_steps=n * args.n_steps)
        aci, brax = measure_throughput(ppo, BraxEnv(ppo.env), args)
        rows.append({"n_envs": n, "batch": ppo.batch_size, "aci_jax": aci, "brax": brax,
                     "ratio": aci["env_steps_per_s"] / brax["env_steps_per_s"]})
        print_cells([n, f"{aci['env_steps_per_s']:,.0f}", f"{brax['env_steps_per_s']:,.0f}", f"{rows[-1]['ratio']:.2f}",
                     f"{aci['compile_s']:.0f}", f"{brax['compile_s']:.0f}", aci["iterations_per_window"]],
                    THROUGHPUT_COLUMNS)
    return rows


# -- learning ----------------------------------------------------------------------------------------

def make_evaluate(env, n_envs: int, policy):
    """jitted `evaluate(params, key) -> (n_envs,)` return of each env's first episode under the
    deterministic `policy(params, obs_dict) -> action`; both trainers use it, with the same keys."""
    import jax
    import jax.numpy as jnp

    def evaluate(params, key):
        state = jax.vmap(env.reset)(jax.random.split(key, n_envs))

        def step(carry, _):
            state, ret, running = carry
            state = jax.vmap(env.step)(state, policy(params, state.obs))
            done = running & (state.metrics["episode_done"] > 0)
            return (state, jnp.where(done, state.metrics["return"], ret), running & ~done), None

        init = (state, jnp.zeros(n_envs), jnp.ones(n_envs, bool))
        (_, ret, _), _ = jax.lax.scan(step, init, None, length=env.max_steps)  # every episode ends by then
        return ret

    return jax.jit(evaluate)


def last_episodes_mean(returns: list[float], counts: list[float], n: int = 100) -> float:
    """Mean return of the last `n` finished episodes, from per-iteration means and counts (the
    statistic of brax's training log; episodes within an iteration count alike)."""
    total = weight = 0.0
    for r, c in zip(reversed(returns), reversed(counts)):
        take = min(c, n - weight)
        if take > 0 and math.isfinite(r):
            total, weight = total + take * r, weight + take
        if weight >= n:
            break
    return total / weight if weight else math.nan


def aci_learn(ppo, evaluate, seed: int, eval_key, every: int) -> dict:
    """Train one seed; evaluate at 0 and every `every` iterations."""
    import jax
    import numpy as np

    ts = ppo.jit_init(jax.random.PRNGKey(seed))
    evals = [(0, float(np.mean(evaluate(ts.params, eval_key))))]
    returns, counts, train, it_s = [], [], [], []
    t_start = time.perf_counter()
    for it in range(1, ppo.n_iterations + 1):
        t0 = time.perf_counter()
        ts, m = ppo.jit_iteration(ts)
        returns.append(float(m["episode_return"]))  # blocks
        it_s.append(time.perf_counter() - t0)
        counts.append(float(m["episodes"]))
        train.append((int(m["env_steps"]), last_episodes_mean(returns, counts)))
        if it % every == 0:
            evals.append((int(m["env_steps"]), float(np.mean(evaluate(ts.params, eval_key)))))
    return {"train": train, "eval": evals, "wall_s": time.perf_counter() - t_start,
            "env_steps_per_s": ppo.batch_size / float(np.median(it_s[1:] or it_s))}


def brax_learn(ppo, benv, args, evaluate, seed: int, eval_key, every: int) -> dict:
    """Train one seed with brax; its training log every iteration, evaluations via policy_params_fn."""
    import numpy as np

    train, evals, sps = [], [], []

    def progress(step, metrics):
        if "episode/return" in metrics:
            train.append((int(step), float(metrics["episode/return"])))
        if "training/sps" in metrics:
            sps.append(float(metrics["training/sps"]))

    def on_params(step, make_policy, params):
        evals.append((int(step), float(np.mean(evaluate(params, eval_key)))))

    t_start = time.perf_counter()
    brax_train(ppo, benv, args, ppo.n_iterations * ppo.batch_size, ppo.n_iterations // every, seed=seed,
               log_training_metrics=True, training_metrics_steps=ppo.batch_size,
               progress_fn=progress, policy_params_fn=on_params)
    return {"train": train, "eval": evals, "wall_s": time.perf_counter() - t_start,
            "env_steps_per_s": float(np.median(sps[1:] or sps))}


def brax_policy(ppo, benv, args):
    """`policy(params, obs_dict) -> action`: brax's deterministic policy on the flattened obs."""
    from brax.training.agents.ppo import networks as ppo_networks

    network = brax_network_factory(ppo, args.brax_distribution)(benv.observation_size, benv.action_size)
    make_policy = ppo_networks.make_inference_fn(network)
    return lambda params, obs: make_policy(params, deterministic=True)(benv.flatten_obs(obs), None)[0]


def run_learning(args) -> dict:
    import jax

    from aci_jax.envs.brax_env import BraxEnv

    probe = build_ppo(args, args.learn_envs, total_steps=1)
    chunk = args.eval_points * probe.batch_size
    total = -(-args.learn_steps // chunk) * chunk
    ppo = build_ppo(args, args.learn_envs, total_steps=total)
    benv = BraxEnv(ppo.env)
    every = ppo.n_iterations // args.eval_points
    eval_aci = make_evaluate(ppo.env, args.eval_envs, lambda p, obs: ppo.make_policy(p)(obs))
    eval_brax = make_evaluate(ppo.env, args.eval_envs, brax_policy(ppo, benv, args))
    runs = []
    for seed in args.seeds:
        key = jax.random.PRNGKey(10_000 + seed)
        aci = aci_learn(ppo, eval_aci, seed, key, every)
        brax = brax_learn(ppo, benv, args, eval_brax, seed, key, every)
        runs.append({"seed": seed, "aci_jax": aci, "brax": brax})
        print(f"seed {seed}: final eval return aci_jax {aci['eval'][-1][1]:.2f}, brax {brax['eval'][-1][1]:.2f}; "
              f"wall {aci['wall_s']:.0f} s / {brax['wall_s']:.0f} s; training env-steps/s "
              f"{aci['env_steps_per_s']:,.0f} / {brax['env_steps_per_s']:,.0f}", flush=True)
    result = {"n_envs": args.learn_envs, "env_steps": total, "iterations": ppo.n_iterations, "runs": runs}
    result["points"] = curve_points(runs, [e[0] for e in runs[0]["aci_jax"]["eval"]])
    result["verdicts"] = verdicts(result["points"])
    print_learning(result)
    return result


def _at(curve: list, step: int) -> float:
    """The curve's value at `step` (its last point at or before it)."""
    vals = [v for s, v in curve if s <= step]
    return vals[-1] if vals else math.nan


def curve_points(runs: list[dict], steps: list[int]) -> list[dict]:
    """Per eval step: each trainer's training and eval return, one value per seed."""
    out = []
    for step in steps:
        row = {"env_steps": step}
        for side in ("aci_jax", "brax"):
            row[f"{side}_train"] = [_at(r[side]["train"], step) for r in runs]
            row[f"{side}_eval"] = [_at(r[side]["eval"], step) for r in runs]
        out.append(row)
    return out


def _within_noise(a: list[float], b: list[float]) -> dict:
    """Difference of seed means against 2 standard errors of that difference (seed-to-seed spread)."""
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"aci_jax": a.mean(), "brax": b.mean(), "diff": a.mean() - b.mean()}
    if min(len(a), len(b)) < 2 or not np.isfinite([*a, *b]).all():
        return {**out, "se_diff": None, "within_noise": None}
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return {**out, "se_diff": se, "within_noise": bool(abs(out["diff"]) <= 2 * se)}


def verdicts(points: list[dict]) -> dict:
    """Final training return, final eval return and the eval curve's mean (after step 0), each
    per seed, aci_jax against brax."""
    final = lambda key: points[-1][key]
    curve = lambda key: [sum(vals) / len(vals) for vals in zip(*(p[key] for p in points[1:]))]
    return {"final_train_return": _within_noise(final("aci_jax_train"), final("brax_train")),
            "final_eval_return": _within_noise(final("aci_jax_eval"), final("brax_eval")),
            "eval_curve_mean": _within_noise(curve("aci_jax_eval"), curve("brax_eval"))}


# -- reporting ---------------------------------------------------------------------------------------

THROUGHPUT_COLUMNS = [("n_envs", 6), ("aci_jax st/s", 12), ("brax st/s", 10), ("aci/brax", 8),
                      ("aci compile s", 13), ("brax compile s", 14), ("it/window", 9)]
LEARNING_COLUMNS = [("env steps", 9), ("aci train", 13), ("brax train", 13), ("aci eval", 13), ("brax eval", 13)]


def print_header(columns) -> None:
    print(" ".join(f"{name:>{w}}" for name, w in columns))
    print(" ".join("-" * w for _, w in columns), flush=True)


def print_cells(cells, columns) -> None:
    print(" ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, columns)), flush=True)


def _mean_sd(vals: list[float]) -> str:
    import numpy as np

    v = np.asarray(vals, float)
    if not np.isfinite(v).any():
        return "-"
    return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")


def print_learning(result: dict) -> None:
    n_seeds = len(result["runs"])
    print(f"\nlearning curve, {result['n_envs']} envs, {n_seeds} seed(s): mean ± sd over seeds; train = mean "
          "return of the last 100 training episodes, eval = deterministic return, shared rollout")
    print_header(LEARNING_COLUMNS)
    for p in result["points"]:
        print_cells([f"{p['env_steps']:,}", *(_mean_sd(p[k]) for k in ("aci_jax_train", "brax_train",
                                                                          "aci_jax_eval", "brax_eval"))],
                    LEARNING_COLUMNS)
    for name, v in result["verdicts"].items():
        verdict = {True: "within noise", False: "DIFFERS", None: "n/a (needs >= 2 seeds, finished episodes)"}[v["within_noise"]]
        se = "" if v["se_diff"] is None else f", 2·SE {2 * v['se_diff']:.2f}"
        print(f"{name}: aci_jax {v['aci_jax']:.2f}, brax {v['brax']:.2f}, diff {v['diff']:+.2f}{se}: {verdict}")


def _json_safe(x):
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", args.platform)
    install_device_put_replicated()
    import brax
    import jax

    info = machine_info(devices=len(jax.devices()), brax=brax.__version__)
    if info["load_avg_start"][0] > 0.5:
        print(f"warning: load average {info['load_avg_start'][0]:.2f} at start; other processes share these "
              "cores and slow both trainers", file=sys.stderr)
    print(f"detection, one {args.resolution}x{args.resolution} eye (supersample {args.supersample}), n_steps "
          f"{args.n_steps}, {args.n_minibatches} minibatches, {args.n_epochs} epochs; {info['platform']} "
          f"({info['devices']} device), {info['cpu']} ({info['cores']} cores)", flush=True)
    t0 = time.perf_counter()
    out = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if "throughput" in args.parts:
        out["throughput"] = run_throughput(args)
    if "learning" in args.parts:
        out["learning"] = run_learning(args)
    info.update(load_avg_end=os.getloadavg(), wall_s=time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_json_safe(out), indent=1, default=float))
    print(f"total {info['wall_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
