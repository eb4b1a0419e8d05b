"""Native MuJoCo reference for `env_throughput.py`: the same scene stepped env by env in Python.

Each env is one `MjData` of the world `build_world(env_cfg, proxy_walls=False)` builds (identical
mazes, agent and objects; the real wall boxes collide). One env step does what the JAX env does:

* control: the point agent's controller (vx = v·cos yaw, vy = v·sin yaw, yaw target = a1·π, with
  v = speed·(a0 + 1)/2) from a uniform random action;
* physics: `frame_skip` calls of `mj_step`, the contact flag checked (`d.ncon`) after each;
* eyes: `mj_multiRay` per eye, as many rays as the JAX buffer casts (max_eyes · max_res² ·
  supersample²), directions from `aci_jax.eyes.geometry.eye_rays` in the agent frame rotated by the
  agent's yaw, geom groups 2 and 3 excluded and the agent's body skipped; each pixel's colour is the
  mean of its sub-rays' flat geom colours, pushed into a frame stack;
* task: distances to the objects, a distance reward, done on reaching an object or the time limit,
  and an in-place reset (fresh spawn cells and heading) of finished episodes.

`measure` runs this loop in one process; `measure_parallel` splits the envs over worker processes
and sums their env-steps/s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import mujoco
import numpy as np

EYE_GEOMGROUP = np.array([1, 1, 0, 0, 1, 1], np.uint8)  # groups 2 (markers), 3 (proxies) unseen
REACH_DISTANCE = 1.0
RAY_CUTOFF = 1e6


@dataclass(frozen=True)
class NativeSpec:
    """What a worker needs to rebuild the scene: the experiment and its Hydra overrides."""

    exp: str
    overrides: tuple[str, ...]


@dataclass
class NativeScene:
    """The compiled world plus the static tables the native step needs."""

    model: mujoco.MjModel
    frame_skip: int
    max_steps: int
    stack: int
    speed: float
    agent_body: int
    qpos_adr: np.ndarray  # (3,) x, y, yaw
    actuators: np.ndarray  # (3,) vx, vy, yaw
    agent_z: float  # the eyes' height (agent radius), as in the JAX env
    mocap_ids: np.ndarray  # (n_objects,) mocap index of each object
    object_z: np.ndarray  # (n_objects,) object radius (its centre height)
    spawn: list[list[np.ndarray]]  # per maze, per body (agent first): (n_cells, 2) world xy
    eye_offsets: np.ndarray  # (E, 3) eye positions relative to the agent's centre at yaw 0
    eye_dirs: np.ndarray  # (E, n_rays, 3) agent-frame ray directions at yaw 0
    pixels: tuple[int, int, int]  # (E, R·R, s²) to reduce rays to pixels
    geom_rgb: np.ndarray  # (ngeom, 3) flat colour per geom
    init_yaw: float | None


@lru_cache(maxsize=None)
def build_scene(spec: NativeSpec) -> NativeScene:
    """Compose the config, build the colliding world and the eyes' agent-frame rays (once)."""
    import jax.numpy as jnp

    from aci_jax.config import env_config, load_config
    from aci_jax.eyes.geometry import EyeParams, eye_rays, static_buffer
    from aci_jax.world.scene import build_world

    env_cfg = env_config(load_config(spec.exp, list(spec.overrides)))
    world = build_world(env_cfg, proxy_walls=False)
    agent_name = next(iter(world.agents))
    agent = world.agents[agent_name]
    agent_cfg = env_cfg.agents[agent_name]
    objects = list(world.objects.values())

    eyes_cfg = agent_cfg.eyes
    buf = static_buffer(eyes_cfg, env_cfg.render)
    origins, dirs = eye_rays(EyeParams.from_config(eyes_cfg), buf, jnp.zeros(3), jnp.float32(0.0),
                             agent.radius)
    origins, dirs = np.asarray(origins, np.float64), np.asarray(dirs, np.float64)
    n_eyes, r, s2 = dirs.shape[0], buf.max_res, buf.supersample ** 2

    bodies = [agent_name, *world.objects]
    spawn = []
    for info in world.mazes:
        id_map = dict(env_cfg.mazes[info.maze.name].get("agent_id_map") or {})
        per_body = []
        for name in bodies:
            cells = sorted({c for g, names in id_map.items() if name in names
                            for c in info.maze.reset_cells.get(g, [])})
            per_body.append(np.array([info.cell_world(i, j) for i, j in cells]))
        spawn.append(per_body)

    init_yaw = agent_cfg.get("init_yaw")
    return NativeScene(
        model=world.model, frame_skip=int(env_cfg.frame_skip), max_steps=int(env_cfg.max_episode_steps),
        stack=int(env_cfg.frame_stack), speed=float(agent_cfg.speed), agent_body=agent.body,
        qpos_adr=np.asarray(agent.qpos_adr), actuators=np.asarray(agent.actuators), agent_z=agent.radius,
        mocap_ids=np.array([o.mocap for o in objects], int), object_z=np.array([o.radius for o in objects]),
        spawn=spawn, eye_offsets=origins, eye_dirs=dirs.reshape(n_eyes, -1, 3),
        pixels=(n_eyes, r * r, s2), geom_rgb=np.asarray(world.model.geom_rgba[:, :3], np.float64),
        init_yaw=None if init_yaw is None else float(np.deg2rad(init_yaw)))


class NativeEnvs:
    """`n` native envs of one scene, stepped one after the other in plain Python."""

    def __init__(self, scene: NativeScene, n: int, seed: int):
        self.sc = scene
        self.rng = np.random.default_rng(seed)
        self.data = [mujoco.MjData(scene.model) for _ in range(n)]
        n_obj = len(scene.mocap_ids)
        self.step_count = np.zeros(n, int)
        self.maze = np.zeros(n, int)
        self.ret = np.zeros(n)
        self.prev_dist = np.zeros((n, n_obj))
        e, p, _ = scene.pixels
        self.frames = np.zeros((n, scene.stack, e, p, 3))
        # per-env ray buffers, reused every step
        n_rays = scene.eye_dirs.shape[1]
        self._geom = np.zeros(n_rays, np.int32)
        self._dist = np.zeros(n_rays)
        self._all_geom = np.zeros((e, n_rays), np.int32)
        self.seconds = {"physics": 0.0, "eyes": 0.0}  # wall time inside mj_step / casting + shading
        for i in range(n):
            self.reset(i)

    def reset(self, i: int) -> None:
        """Fresh episode in env i: distinct spawn cells for agent and objects, new heading."""
        sc, d = self.sc, self.data[i]
        mujoco.mj_resetData(sc.model, d)
        cells = sc.spawn[self.maze[i]]
        taken: set[tuple] = set()
        xy = []
        for cand in cells:
            free = [c for c in cand if tuple(c) not in taken] or list(cand)
            c = free[self.rng.integers(len(free))]
            taken.add(tuple(c))
            xy.append(c)
        yaw = sc.init_yaw if sc.init_yaw is not None else self.rng.uniform(-np.pi, np.pi)
        d.qpos[sc.qpos_adr] = (xy[0][0], xy[0][1], yaw)
        d.ctrl[sc.actuators[2]] = yaw
        for k, (mid, z) in enumerate(zip(sc.mocap_ids, sc.object_z)):
            d.mocap_pos[mid] = (xy[k + 1][0], xy[k + 1][1], z)
        mujoco.mj_kinematics(sc.model, d)
        self.step_count[i] = 0
        self.ret[i] = 0.0
        self.prev_dist[i] = self._distances(d)
        self.frames[i] = 0.0
        self.maze[i] = (self.maze[i] + 1) % len(sc.spawn)

    def _distances(self, d: mujoco.MjData) -> np.ndarray:
        pos = d.qpos[self.sc.qpos_adr[:2]]
        return np.linalg.norm(d.mocap_pos[self.sc.mocap_ids, :2] - pos, axis=-1)

    def _eyes(self, i: int, d: mujoco.MjData) -> np.ndarray:
        """Cast every eye's rays from the agent's current pose; flat-shaded image (E, R·R, 3)."""
        sc = self.sc
        x, y, yaw = d.qpos[sc.qpos_adr]
        c, s = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        origins = sc.eye_offsets @ rot.T + (x, y, sc.agent_z)
        dirs = sc.eye_dirs @ rot.T  # (E, n_rays, 3)
        n_rays = dirs.shape[1]
        for e in range(dirs.shape[0]):
            mujoco.mj_multiRay(sc.model, d, origins[e], dirs[e].ravel(), EYE_GEOMGROUP, 1, sc.agent_body,
                               self._geom, self._dist, None, n_rays, RAY_CUTOFF)
            self._all_geom[e] = self._geom
        hit = self._all_geom >= 0
        rgb = np.where(hit[..., None], sc.geom_rgb[self._all_geom], 0.0)
        n_eyes, n_pix, s2 = sc.pixels
        return rgb.reshape(n_eyes, n_pix, s2, 3).mean(-2)

    def step(self, i: int) -> None:
        """One env step of env i with a uniform random action."""
        sc, d, m = self.sc, self.data[i], self.sc.model
        a0, a1 = self.rng.uniform(-1.0, 1.0, 2)
        v = sc.speed * (a0 + 1) / 2
        yaw = d.qpos[sc.qpos_adr[2]]
        d.ctrl[sc.actuators] = (v * np.cos(yaw), v * np.sin(yaw), a1 * np.pi)
        t0 = time.perf_counter()
        contact = False
        for _ in range(sc.frame_skip):
            mujoco.mj_step(m, d)
            contact |= d.ncon > 0
        mujoco.mj_kinematics(m, d)  # the eyes see the poses after the last sub-step, as in the JAX env
        t1 = time.perf_counter()
        self.seconds["physics"] += t1 - t0

        dist = self._distances(d)
        self.ret[i] += float(np.sum(self.prev_dist[i] - dist)) - float(contact)
        self.prev_dist[i] = dist
        self.step_count[i] += 1
        done = bool((dist < REACH_DISTANCE).any()) or self.step_count[i] >= sc.max_steps
        if done:
            self.reset(i)
        t2 = time.perf_counter()
        img = self._eyes(i, d)
        self.seconds["eyes"] += time.perf_counter() - t2
        self.frames[i, :-1] = self.frames[i, 1:]
        self.frames[i, -1] = img

    def run(self, n_steps: int) -> None:
        for _ in range(n_steps):
            for i in range(len(self.data)):
                self.step(i)


def measure(spec: NativeSpec, n_envs: int, n_steps: int, warmup: int = 2, seed: int = 0,
            min_seconds: float = 0.0, repeats: int = 1) -> dict:
    """Env-steps/s of `n_envs` native envs in this process (warm-up rounds excluded).

    Times `repeats` windows, each of `n_steps` rounds over all envs and then more rounds until
    `min_seconds` have passed, and reports the fastest window (the least disturbed by other load).
    """
    envs = NativeEnvs(build_scene(spec), n_envs, seed)
    envs.run(warmup)
    windows = []
    for _ in range(max(repeats, 1)):
        envs.seconds = dict.fromkeys(envs.seconds, 0.0)
        steps, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            envs.run(n_steps)
            steps += n_steps
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        cpu = time.process_time() - c0
        env_steps = steps * n_envs
        windows.append({"env_steps": env_steps, "seconds": elapsed, "cpu_seconds": cpu,
                        "env_steps_per_s": env_steps / elapsed, "env_steps_per_cpu_s": env_steps / cpu,
                        "us_per_env_step": {k: 1e6 * v / env_steps for k, v in
                                            {**envs.seconds, "total": elapsed}.items()}})
    best = max(windows, key=lambda w: w["env_steps_per_s"])
    return dict(best, all_env_steps_per_s=[w["env_steps_per_s"] for w in windows])


def _worker_init() -> None:
    os.environ["JAX_PLATFORMS"] = "cpu"  # JAX only computes the eye geometry here; keep off accelerators


def _measure_star(args) -> dict:
    return measure(*args)


def split_envs(n_envs: int, n_workers: int) -> list[int]:
    """Envs per worker: as even as possible, no empty worker."""
    n_workers = max(1, min(n_workers, n_envs))
    base, extra = divmod(n_envs, n_workers)
    return [base + (k < extra) for k in range(n_workers)]


class NativePool:
    """Worker processes (spawned, so no JAX state is forked) that measure the native loop together."""

    def __init__(self, n_workers: int = 2):
        self.n_workers = n_workers
        self.pool = mp.get_context("spawn").Pool(n_workers, initializer=_worker_init)

    def measure_parallel(self, spec: NativeSpec, n_envs: int, n_steps: int, warmup: int = 2,
                         min_seconds: float = 0.0, seed: int = 0, repeats: int = 1) -> dict:
        """Summed env-steps/s of the workers, each stepping its share of the envs at the same time
        (each worker's fastest of `repeats` windows, see `measure`)."""
        shares = split_envs(n_envs, self.n_workers)
        jobs = [(spec, n, n_steps, warmup, seed + k, min_seconds, repeats) for k, n in enumerate(shares)]
        results = self.pool.map(_measure_star, jobs, chunksize=1)
        total = sum(r["env_steps"] for r in results)
        us = {k: sum(r["us_per_env_step"][k] * r["env_steps"] for r in results) / total
              for k in results[0]["us_per_env_step"]}
        return {"env_steps_per_s": sum(r["env_steps_per_s"] for r in results),
                "env_steps_per_cpu_s": total / sum(r["cpu_seconds"] for r in results),
                "us_per_env_step": us,  # per worker: wall time per env step, by phase
                "workers": [dict(r, n_envs=n) for r, n in zip(results, shares)]}

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
