"""`python -m aci_jax.train exp=detection [overrides]`: train one individual with PPO.

The run folder (`run_dir`) holds `config.yaml`, `metrics.jsonl` (one line per iteration),
`checkpoints/` (orbax, the whole TrainState every `train.checkpoint_every` iterations and at the
end), `fitness.json` (deterministic evaluation on the eval env variant) and
`plots/learning_curve.png`. Running again with the same `run_dir` resumes from its latest checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from aci_jax.config import CONFIG_DIR, ConfigError, validate
from aci_jax.envs.env import make_env
from aci_jax.rl import checkpoint
from aci_jax.rl.fitness import fitness
from aci_jax.rl.ppo import PPO, TrainState

LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
_BUILT: dict[str, tuple] = {}  # config yaml -> (ppo, evaluate): equal configs share compilations


class TrainingDiverged(RuntimeError):
    """NaN/inf in the losses or parameters; the last good checkpoint is kept."""


def build(cfg: DictConfig) -> tuple[PPO, Any]:
    """PPO on the training env and a jitted `evaluate(params, eyes, key) -> returns` (cached)."""
    key = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["env", "eval_env", "trainer", "train"])
                            if "eval_env" in cfg else OmegaConf.masked_copy(cfg, ["env", "trainer", "train"]))
    if key not in _BUILT:
        try:
            ppo = PPO(make_env(cfg), cfg.trainer)
        except ValueError as e:  # bad trainer values
            raise ConfigError(f"trainer: {e}") from None
        n_eval = int(cfg.train.get("eval_envs") or cfg.env.n_envs)
        _BUILT[key] = ppo, jax.jit(make_evaluate(ppo, make_env(cfg, eval=True), n_eval))
    return _BUILT[key]


def make_evaluate(ppo: PPO, env, n_envs: int):
    """`evaluate(params, eyes, key) -> (n_envs, n_mazes)` returns of the deterministic policy: each
    env plays one episode per maze (the `cycle` schedule) in a `lax.scan`."""
    m = env.n_mazes
    steps = m * int(env.cfg.max_episode_steps)

    def evaluate(params, eyes, key):
        act = ppo.make_policy(params, eyes, deterministic=True)
        state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, n_envs), eyes)

        def step(carry, _):
            state, returns, count = carry
            state = jax.vmap(env.step)(state, act(state.obs))
            done = (state.metrics["episode_done"] > 0) & (count < m)
            rows = jnp.arange(n_envs)
            slot = jnp.minimum(count, m - 1)
            returns = returns.at[rows, slot].set(jnp.where(done, state.metrics["return"], returns[rows, slot]))
            return (state, returns, count + done), None

        init = (state, jnp.full((n_envs, m), jnp.nan), jnp.zeros(n_envs, jnp.int32))
        (_, returns, _), _ = jax.lax.scan(step, init, None, length=steps)
        return returns

    return evaluate


@jax.jit
def _finite(ts: TrainState, metrics: dict) -> jax.Array:
    leaves = jax.tree.leaves(ts.params) + [metrics[k] for k in LOSSES]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _jsonable(m: dict) -> dict:
    out = {}
    for k, v in m.items():
        v = np.asarray(v).item()
        out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def _start(cfg: DictConfig, ppo: PPO, mngr) -> TrainState:
    """Latest checkpoint of this run, else `train.model_path`, else a fresh init."""
    ts = ppo.jit_init(jax.random.PRNGKey(int(cfg.seed)))
    if mngr.latest_step() is not None:
        step = mngr.latest_step()
        ts = checkpoint.restore(mngr, step, ts)
        print(f"[train] resuming from step {step:,} (iteration {int(ts.iteration)})")
    elif cfg.train.get("model_path"):
        ts, step = checkpoint.load(cfg.train.model_path, ts)
        print(f"[train] starting from {cfg.train.model_path} (step {step:,})")
    return ts


def _log_line(m: dict, it: int, n_it: int, rate: float, eta: float) -> str:
    ret, succ = m.get("episode_return"), m.get("episode_success")
    f = lambda v: "  n/a" if v is None else f"{v:5.2f}"
    return (f"[train] it {it}/{n_it} | steps {m['env_steps']:,} | {rate:,.0f} steps/s | return {f(ret)} | "
            f"success {f(succ)} | ETA {time.strftime('%H:%M:%S', time.gmtime(max(eta, 0)))}")


def train_run(cfg: DictConfig, run_dir: str | Path, stop_after: int | None = None) -> dict:
    """Train (or resume) in `run_dir`; stop early after `stop_after` iterations of this call.
    Returns {'state', 'fitness' (None when stopped early), 'iterations' (done in this call)}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    ppo, evaluate = build(cfg)
    mngr = checkpoint.manager(run_dir / "checkpoints", int(cfg.train.max_to_keep))
    ts = _start(cfg, ppo, mngr)
    n_it, every = ppo.n_iterations, max(1, int(cfg.train.checkpoint_every))
    done, t_first, t0 = 0, None, time.perf_counter()
    with open(run_dir / "metrics.jsonl", "a") as log:
        while int(ts.iteration) < n_it and (stop_after is None or done < stop_after):
            t = time.perf_counter()
            new, metrics = ppo.jit_iteration(ts)
            if not bool(_finite(new, metrics)):
                mngr.close()
                raise TrainingDiverged(
                    f"NaN/inf in losses or params at iteration {int(new.iteration)}; not saved, the last "
                    f"good checkpoint is in {run_dir / 'checkpoints'} (step {mngr.latest_step()})")
            ts, done = new, done + 1
            dt = time.perf_counter() - t
            t_first = t_first if t_first is not None else time.perf_counter()  # after the compile
            m = _jsonable(metrics)
            m["env_steps_per_s"] = ppo.batch_size / dt
            m["iteration"] = it = int(ts.iteration)
            log.write(json.dumps(m) + "\n")
            log.flush()
            per_it = (time.perf_counter() - t_first) / (done - 1) if done > 1 else dt
            print(_log_line(m, it, n_it, m["env_steps_per_s"], per_it * (n_it - it)), flush=True)
            if it % every == 0 or it == n_it:
                checkpoint.save(mngr, int(ts.env_steps), ts)
    mngr.close()
    result = {"state": ts, "iterations": done, "fitness": None}
    if int(ts.iteration) >= n_it:
        result["fitness"] = write_fitness(evaluate, ts, cfg, run_dir)
        plot_learning_curve(run_dir)
    print(f"[train] {done} iterations in {time.perf_counter() - t0:.1f} s; run folder {run_dir}")
    return result


def write_fitness(evaluate, ts: TrainState, cfg: DictConfig, run_dir: Path) -> float:
    """Evaluate the deterministic policy on the eval env; fitness.json with its returns."""
    returns = np.asarray(evaluate(ts.params, ts.eyes, jax.random.PRNGKey(int(cfg.seed) + 1)))
    fit = fitness(returns)
    (run_dir / "fitness.json").write_text(json.dumps(
        {"fitness": fit, "env_steps": int(ts.env_steps), "returns": returns.tolist()}, indent=1))
    print(f"[train] fitness {fit:.3f} from {returns.size} evaluation episodes "
          f"(mean return {np.nanmean(returns):.3f})")
    return fit


def plot_learning_curve(run_dir: Path) -> Path:
    """plots/learning_curve.png: mean episode return and success rate vs env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    x = [r["env_steps"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label in zip(axes, ("episode_return", "episode_success"), ("mean return", "success rate")):
        ax.plot(x, [np.nan if r.get(key) is None else r[key] for r in rows], ".-")
        ax.set(xlabel="env steps", ylabel=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "plots" / "learning_curve.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        train_run(cfg, Path(cfg.run_dir))
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except TrainingDiverged as e:
        raise SystemExit(f"training diverged: {e}") from None


if __name__ == "__main__":
    main()
