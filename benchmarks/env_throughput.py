"""Env throughput: env-steps/s of the JAX env against a native MuJoCo reference of the same scene.

The JAX side times the full `jax.jit(jax.vmap(env.step))` (control, `frame_skip` MJX sub-steps with
contacts, task rewards, auto-reset, eye rendering, frame stack) on random actions, after compiling
and warming up. The env axis is split over `--devices` devices (on CPU: host devices, default one
per core) with `shard_map`, so each device steps its own shard and never waits on the others. The
native side (`native_reference.py`) steps the same world (`build_world(proxy_walls=False)`) env by
env in plain Python with `mj_step` and `mj_multiRay` (as many rays as the JAX eyes cast), split over
as many worker processes as JAX has devices; their env-steps/s add up. Each side times `--repeats`
windows and keeps the fastest, as other load on the machine only ever slows a window down.

Two sweeps, for detection (OPEN maze) and navigation (COMPLEX maze), and on request detection_optics
(detection seen through the optics eye: `--tasks detection,detection_optics --no-native` gives its cost):
  * `n_envs`: number of envs (`--n-envs`), one 10×10 eye;
  * `eyes`: eye grids (`--eyes`) and resolutions (`--resolutions`) at `--grid-envs` envs, either
    their full product (`--grid product`) or a cross through one 10×10 eye (`--grid cross`: every
    grid at 10×10, every resolution with one eye; the default, to keep the run short).

Writes a table to stdout, JSON to `--out` and a PNG plot (vs n_envs; vs pixels per agent) next to it.

    python benchmarks/env_throughput.py --quick             # smoke run, < 2 min on 2 CPU cores
    python benchmarks/env_throughput.py                     # full default run
    python benchmarks/env_throughput.py --grid product --resolutions 1,4,10 --n-envs 64
    python benchmarks/env_throughput.py --breakdown --n-envs 64 --eyes 1x1 --resolutions 1,10
    python benchmarks/env_throughput.py --platform cuda --devices 1 --native-workers 16 \
        --tasks detection --n-envs 4096,16384 --eyes 1x1 --resolutions 10   # on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from machine import machine_info

TASKS = {"detection": "OPEN", "navigation": "COMPLEX", "detection_optics": "OPEN"}  # exp -> its maze
EYE_KEY = "env.agents.agent.eyes"


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration."""

    sweep: str  # "n_envs" or "eyes"
    task: str  # exp name: detection | navigation
    n_envs: int
    eyes: tuple[int, int]  # (n_lat, n_lon) grid
    resolution: int  # pixels per side

    @property
    def n_eyes(self) -> int:
        return self.eyes[0] * self.eyes[1]

    @property
    def pixels(self) -> int:
        """Pixels per agent (all eyes)."""
        return self.n_eyes * self.resolution ** 2

    @property
    def key(self) -> tuple:
        """What the measurement depends on (the same config in both sweeps is measured once)."""
        return self.task, self.n_envs, self.eyes, self.resolution

    def overrides(self) -> tuple[str, ...]:
        r = self.resolution
        return (f"{EYE_KEY}.num_eyes=[{self.eyes[0]},{self.eyes[1]}]", f"{EYE_KEY}.resolution=[{r},{r}]",
                f"env.n_envs={self.n_envs}")


# -- command line ------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _grids(text: str) -> list[tuple[int, int]]:
    """'1x1,2x2,1x16' -> [(1, 1), (2, 2), (1, 16)]."""
    out = []
    for item in text.split(","):
        a, _, b = item.lower().partition("x")
        out.append((int(a), int(b or 1)))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="detection,navigation",
                   help="exps to run (detection: OPEN, navigation: COMPLEX; also detection_optics: OPEN)")
    p.add_argument("--n-envs", type=_ints, default=[16, 64, 256, 1024], help="n_envs sweep (one 10x10 eye)")
    p.add_argument("--eyes", type=_grids, default=[(1, 1), (2, 2), (4, 4)], help="eye grids, e.g. 1x1,2x2,1x16")
    p.add_argument("--resolutions", type=_ints, default=[1, 4, 10, 16, 32], help="pixels per side")
    p.add_argument("--grid", choices=("cross", "product"), default="cross",
                   help="eyes sweep: cross through one 10x10 eye, or the full eyes x resolutions product")
    p.add_argument("--grid-envs", type=int, default=64, help="n_envs of the eyes sweep")
    p.add_argument("--platform", default="cpu",
                   help="JAX platform (JAX_PLATFORMS, unless already set), e.g. cpu or cuda")
    p.add_argument("--devices", type=int, default=os.cpu_count(),
                   help="devices the JAX env axis is split over (on CPU: host devices, one per core)")
    p.add_argument("--native-workers", type=int, default=None,
                   help="native worker processes (default: --devices, so both sides use the same cores)")
    p.add_argument("--max-steps", type=int, default=50, help="at most this many JAX steps per timing window")
    p.add_argument("--min-steps", type=int, default=3, help="at least this many JAX steps per timing window")
    p.add_argument("--seconds", type=float, default=4.5,
                   help="target timing per config and side, split into --repeats windows "
                        "(JAX: steps per window chosen from the warm-up's step time)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timing windows per config and side; the fastest counts (least disturbed by other load)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling (JAX) / per env (native)")
    p.add_argument("--no-native", action="store_true", help="skip the native reference")
    p.add_argument("--breakdown", action="store_true",
                   help="also time physics alone (scan of mjx.step) and rendering alone (env.render_eyes)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, few steps (< 2 min)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/env_throughput.json"))
    args = p.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    for t in args.tasks:
        if t not in TASKS:
            p.error(f"unknown task {t!r}; valid: {sorted(TASKS)}")
    if args.quick:
        args.n_envs, args.grid_envs, args.eyes, args.resolutions = [8], 8, [(1, 1)], [10]
        args.max_steps, args.min_steps, args.seconds, args.warmup, args.repeats = 5, 2, 0.5, 1, 1
    args.repeats = max(1, args.repeats)
    args.devices = max(1, args.devices)
    args.native_workers = max(1, args.native_workers or args.devices)
    for n in [*args.n_envs, args.grid_envs]:
        if n % args.devices:
            p.error(f"n_envs {n} is not a multiple of --devices {args.devices}")
    return args


def build_cases(args) -> list[Case]:
    """The n_envs sweep, then the eyes sweep, per task."""
    cases = []
    for task in args.tasks:
        cases += [Case("n_envs", task, n, (1, 1), 10) for n in args.n_envs]
        if args.grid == "product":
            pairs = [(g, r) for g in args.eyes for r in args.resolutions]
        else:
            pairs = [(g, 10) for g in args.eyes] + [((1, 1), r) for r in args.resolutions]
        seen = set()
        for g, r in pairs:
            if (g, r) not in seen:
                seen.add((g, r))
                cases.append(Case("eyes", task, args.grid_envs, g, r))
    return cases


# -- JAX side ----------------------------------------------------------------------------------------

def configure_jax(platform_name: str, devices: int) -> None:
    """The JAX platform and, for CPU, `devices` host devices (must run before jax is imported)."""
    if "jax" in sys.modules:
        raise RuntimeError("configure_jax must run before jax is imported")
    os.environ.setdefault("JAX_PLATFORMS", platform_name)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()


class JaxEnvBench:
    """One config's JAX env, reset and compiled, its env axis sharded over the host devices."""

    def __init__(self, case: Case, args):
        import jax
        import numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from aci_jax.config import env_config, load_config
        from aci_jax.envs.env import Env

        self.args, self.n = args, case.n_envs
        self.env = Env(env_config(load_config(case.task, list(case.overrides()))))
        self.mesh = Mesh(np.array(jax.devices()[: args.devices]), ("env",))
        self.shard = NamedSharding(self.mesh, PartitionSpec("env"))
        self.key = jax.random.PRNGKey(args.seed)

        t0 = time.perf_counter()
        reset = self.batched(self.env.reset, 1)
        self.state = jax.block_until_ready(reset(self._put(jax.random.split(self._next_key(), self.n))))
        self.reset_compile_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        self.step = self.batched(self.env.step, 2, donate_argnums=0).lower(
            self.state, self.actions(1)[0]).compile()
        self.compile_s = time.perf_counter() - t0

    def batched(self, fn, n_args: int, **jit_kw):
        """jit(vmap(fn)) run by every device on its own shard of the envs (shard_map), so the
        devices never synchronise: no collectives, e.g. in while loops over the batch."""
        import jax
        from jax.sharding import PartitionSpec

        spec = PartitionSpec("env")
        return jax.jit(jax.shard_map(jax.vmap(fn), mesh=self.mesh, in_specs=(spec,) * n_args,
                                     out_specs=spec, check_vma=False), **jit_kw)

    def _next_key(self):
        import jax

        self.key, key = jax.random.split(self.key)
        return key

    def _put(self, x):
        import jax

        return jax.device_put(x, self.shard)

    def actions(self, count: int) -> list:
        """`count` batches of uniform random actions in [-1, 1], already on the devices."""
        import jax

        a = jax.random.uniform(self._next_key(), (count, self.n, self.env.action_size), minval=-1.0, maxval=1.0)
        return jax.block_until_ready([self._put(x) for x in a])

    def run_steps(self, count: int) -> tuple[float, float]:
        """Step `count` times on fresh random actions: (wall, process CPU) seconds."""
        import jax

        acts = self.actions(count)
        t0, c0 = time.perf_counter(), time.process_time()
        for a in acts:
            self.state = self.step(self.state, a)
        jax.block_until_ready(self.state)
        return time.perf_counter() - t0, time.process_time() - c0

    def throughput(self) -> dict:
        """Warm up, pick the number of steps per timing window from the warm-up's speed (a window
        lasts about `--seconds / --repeats`), time `--repeats` windows and keep the fastest."""
        a = self.args
        warm, _ = self.run_steps(a.warmup)
        per_step = warm / max(a.warmup, 1)
        target = a.seconds / a.repeats / max(per_step, 1e-9)
        self.n_steps = int(min(a.max_steps, max(a.min_steps, round(target))))
        windows = [self.run_steps(self.n_steps) for _ in range(a.repeats)]
        wall, cpu = min(windows)
        b = self.env.buffer
        m = self.env.optics.margin if self.env.optics is not None else 0  # optics: buffer layout only
        pixels = b.max_eyes * (b.height + 2 * m) * (b.width + 2 * m) if m else b.pixels
        env_steps = self.n * self.n_steps
        return {"env_steps_per_s": env_steps / wall, "env_steps_per_cpu_s": env_steps / cpu,
                "all_env_steps_per_s": [env_steps / w for w, _ in windows],
                "steps": self.n_steps, "seconds": wall, "cpu_seconds": cpu, "compile_s": self.compile_s,
                "reset_compile_s": self.reset_compile_s,
                "rays_per_env_step": pixels * b.supersample ** 2}

    def breakdown(self) -> dict:
        """µs per env step (wall, all devices together) of the step's parts, timed alone on the
        current (warmed-up) state: physics = lax.scan of `frame_skip` mjx.step; render =
        env.render_eyes; rest = full step − physics − render (task, auto-reset, kinematics, stack)."""
        import jax
        from mujoco import mjx

        env = self.env

        def physics(d):
            return jax.lax.scan(lambda d, _: (mjx.step(env.mx, d), None), d, None, length=env.frame_skip)[0]

        def render(d, info):
            if env.optics is None:
                return env.render_eyes(d, info["eyes"], info["wall_material"])[0]
            return env.render_eyes(d, info["eyes"], info["wall_material"], info["optics"], info["rng"])[0]

        parts = {"physics": (self.batched(physics, 1), (self.state.pipeline_state,)),
                 "render": (self.batched(render, 2), (self.state.pipeline_state, self.state.info))}
        out = {}
        for name, (fn, fn_args) in parts.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*fn_args))
            out[f"{name}_compile_s"] = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(self.n_steps):
                res = fn(*fn_args)
            jax.block_until_ready(res)
            out[name] = 1e6 * (time.perf_counter() - t0) / (self.n * self.n_steps)
            out[f"{name}_cpu"] = 1e6 * (time.process_time() - c0) / (self.n * self.n_steps)
        wall, cpu = self.run_steps(self.n_steps)
        out["step"] = 1e6 * wall / (self.n * self.n_steps)
        out["step_cpu"] = 1e6 * cpu / (self.n * self.n_steps)
        out["rest"] = out["step"] - out["physics"] - out["render"]
        return out


def jax_measure(case: Case, args) -> dict:
    """Throughput of one config (and, with --breakdown, the time split of its step)."""
    bench = JaxEnvBench(case, args)
    result = bench.throughput()
    if args.breakdown:
        result["us_per_env_step"] = bench.breakdown()
    return result


# -- both sides, reporting -----------------------------------------------------------------------------

def run_cases(cases: list[Case], args) -> list[dict]:
    """Measure each distinct case once (JAX, then native), print a row per case as it finishes."""
    from native_reference import NativePool, NativeSpec

    pool = None if args.no_native else NativePool(args.native_workers)
    done: dict[tuple, dict] = {}
    rows = []
    print_table_header(COLUMNS)
    try:
        for case in cases:
            if case.key not in done:
                jx = jax_measure(case, args)
                nat = None
                if pool is not None:
                    spec = NativeSpec(case.task, case.overrides())
                    nat = pool.measure_parallel(spec, case.n_envs, n_steps=1, warmup=args.warmup,
                                                min_seconds=args.seconds / args.repeats, seed=args.seed,
                                                repeats=args.repeats)
                done[case.key] = {"jax": jx, "native": nat}
            rows.append(make_row(case, **done[case.key]))
            print_row(rows[-1])
    finally:
        if pool is not None:
            pool.close()
    return rows


def make_row(case: Case, jax: dict, native: dict | None) -> dict:
    """A JSON row: the case, both sides' measurements and the jax/native ratios (wall and CPU)."""
    row = {**dataclasses.asdict(case), "maze": TASKS[case.task], "n_eyes": case.n_eyes,
           "pixels": case.pixels, "rays_per_env_step": jax["rays_per_env_step"], "jax": jax, "native": native,
           "jax_env_steps_per_s": jax["env_steps_per_s"],
           "native_env_steps_per_s": native["env_steps_per_s"] if native else None}
    row["ratio"] = jax["env_steps_per_s"] / native["env_steps_per_s"] if native else None
    row["ratio_cpu"] = jax["env_steps_per_cpu_s"] / native["env_steps_per_cpu_s"] if native else None
    return row


COLUMNS = [("sweep", 6), ("config", 11), ("n_envs", 6), ("eyes", 4), ("res", 5), ("jax st/s", 9),
           ("native st/s", 11), ("jax/native", 10), ("(cpu)", 5), ("compile s", 9)]
BREAKDOWN_COLUMNS = [("config", 11), ("n_envs", 6), ("eyes", 4), ("res", 5), ("jax phys", 8), ("render", 8),
                     ("rest", 8), ("step", 8), ("nat phys", 8), ("eyes", 8), ("step", 8)]


def print_table_header(columns) -> None:
    print(" ".join(f"{name:>{w}}" for name, w in columns))
    print(" ".join("-" * w for _, w in columns), flush=True)


def _print_cells(cells, columns) -> None:
    print(" ".join(f"{c!s:>{w}}" for c, (_, w) in zip(cells, columns)), flush=True)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _case_cells(r: dict) -> list:
    return [f"{r['task'][:3]}/{r['maze']}", r["n_envs"], r["n_eyes"], f"{r['resolution']}x{r['resolution']}"]


def print_row(r: dict) -> None:
    _print_cells([r["sweep"], *_case_cells(r), f"{r['jax_env_steps_per_s']:.0f}",
                  _fmt(r["native_env_steps_per_s"], ".0f"), _fmt(r["ratio"], ".2f"), _fmt(r["ratio_cpu"], ".2f"),
                  f"{r['jax']['compile_s']:.0f}"], COLUMNS)


def print_breakdown(rows: list[dict]) -> None:
    """µs per env step (wall, both cores): JAX physics / render / rest / step; native physics / eyes /
    step (per worker process, i.e. per core)."""
    print("\nbreakdown, µs per env step (JAX: all devices together; native: per worker process)")
    print_table_header(BREAKDOWN_COLUMNS)
    seen = set()
    for r in rows:
        key = (r["task"], r["n_envs"], r["n_eyes"], r["resolution"])
        if key in seen or "us_per_env_step" not in r["jax"]:
            continue
        seen.add(key)
        j, n = r["jax"]["us_per_env_step"], (r["native"] or {}).get("us_per_env_step", {})
        _print_cells([*_case_cells(r), *(_fmt(j[k], ".1f") for k in ("physics", "render", "rest", "step")),
                      *(_fmt(n.get(k), ".1f") for k in ("physics", "eyes", "total"))], BREAKDOWN_COLUMNS)


def plot(rows: list[dict], path: Path) -> None:
    """Two panels: env-steps/s vs n_envs, and vs pixels per agent (one line per eye count).

    Colour: task; solid filled markers: JAX; dashed hollow markers: native; marker shape: eye count.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    markers = "o^sDvP*X"
    tasks = sorted({r["task"] for r in rows})
    eye_counts = sorted({r["n_eyes"] for r in rows})
    panels = [("n_envs", "n_envs", "envs (one 10x10 eye)"), ("eyes", "pixels", "pixels per agent (all eyes)")]
    for ax, (sweep, xkey, xlabel) in zip(axes, panels):
        for k, task in enumerate(tasks):
            for n_eyes in eye_counts:
                sel = sorted((r for r in rows if r["sweep"] == sweep and r["task"] == task
                              and r["n_eyes"] == n_eyes), key=lambda r: r[xkey])
                if not sel:
                    continue
                mk = markers[eye_counts.index(n_eyes) % len(markers)]
                label = f"{task} ({sel[0]['maze']}), {n_eyes} eye{'s' * (n_eyes > 1)}"
                x = [r[xkey] for r in sel]
                ax.plot(x, [r["jax_env_steps_per_s"] for r in sel], f"{mk}-", color=f"C{k}", label=f"JAX {label}")
                nat = [(xi, r["native_env_steps_per_s"]) for xi, r in zip(x, sel) if r["native_env_steps_per_s"]]
                if nat:
                    ax.plot(*zip(*nat), f"{mk}--", color=f"C{k}", mfc="none", alpha=0.8, label=f"native {label}")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="env-steps/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    n_grid = next((r["n_envs"] for r in rows if r["sweep"] == "eyes"), None)
    axes[0].set_title("vs number of envs")
    axes[1].set_title(f"vs pixels per agent ({n_grid} envs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    configure_jax(args.platform, args.devices)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # native_reference, also for the workers
    import mujoco

    info = machine_info(jax_devices=args.devices, native_workers=args.native_workers, mujoco=mujoco.__version__)
    import jax

    if len(jax.devices()) < args.devices:
        sys.exit(f"--devices {args.devices}, but {jax.default_backend()} has only {len(jax.devices())}")
    if info["load_avg_start"][0] > 0.5:
        print(f"warning: load average {info['load_avg_start'][0]:.2f} at start; other processes "
              "share these cores and skew both sides", file=sys.stderr)
    cases = build_cases(args)
    print(f"{len({c.key for c in cases})} configs, {args.devices} JAX devices ({info['platform']}), "
          f"{args.native_workers} native workers, {info['cpu']} ({info['cores']} cores)", flush=True)
    t0 = time.perf_counter()
    rows = run_cases(cases, args)
    if args.breakdown:
        print_breakdown(rows)
    info.update(load_avg_end=os.getloadavg(), wall_s=time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"machine": info, "args": settings, "results": rows}, indent=1))
    png = args.out.with_suffix(".png")
    plot(rows, png)
    print(f"total {info['wall_s']:.0f} s; wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
