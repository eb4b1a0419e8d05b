"""The functional env: `reset(key) -> State`, `step(State, action) -> State` (brax conventions).

One env is unbatched and pure, so `jax.vmap` batches it and `jax.jit` compiles it. Per step: the
point agent's controller sets the actuators, `frame_skip` MJX sub-steps run (contacts recorded at
each), the task's functions score the step, step hooks run, finished episodes are reset in place
(new maze, spawn cells, wall textures), wall proxies follow the agent, and the eyes render the new
frame into the frame stack. Scripted movers (`aci_jax.envs.movers`: maze walkers, followers, predators,
prey) move their objects after the physics, before the task scores the step. An episode's own fields
(maze, wall textures, step count, return, movers' waypoints...) are an `Episode` in `info['episode']`.
With `eyes.optics.enabled`, the eyes image through their aperture
(`aci_jax.eyes.optics`): `reset` computes the individual's PSFs once (`info['optics']`), and each
frame is blurred, dimmed and given sensor noise from a key folded out of the state's rng.

Eye observations: one (stack, H, W, 3) image per eye slot keyed by name (buffer layout), or with
`env.render.max_pixels` = P one `pixels` (stack, P, 3) of the individual's real pixels, packed
(`geometry.packed_slots`; zeros in unused slots), so a step casts only P · supersample² rays.
`render_eyes` gives display images in both layouts. The optics eye convolves images, so it needs the
buffer layout (config validation rejects it with `env.render.max_pixels`).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import State
from flax import struct
from mujoco import mjx
from omegaconf import DictConfig

from aci_jax.config import env_config
from aci_jax.envs.movers import Mover, MoverWorld, bind_mover, maze_tables
from aci_jax.envs.tasks import StepContext, make_task
from aci_jax.eyes import optics as optics_lib
from aci_jax.eyes.geometry import (EyeBuffer, EyeParams, eye_rays, optics_config, packed_rays, packed_slots,
                                   pixel_mask, static_buffer, unpack)
from aci_jax.eyes.render import RenderScene, cast_rays, make_render_scene
from aci_jax.world.scene import PROXY_PARK_Z, World, build_world

RESET_FIELDS = ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat", "qacc_warmstart", "time")
NEIGHBOURS = np.array([(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)])
NOISE_SALT = 0x0e7e  # the optics eye's sensor noise key: fold_in(state rng, NOISE_SALT)
MOVER_SALT = 0x70e5  # the movers' key: fold_in(the step's hook key, MOVER_SALT)


@struct.dataclass
class Episode:
    """The episode's own fields (one env, unbatched), carried in `state.info['episode']`."""

    maze: jax.Array  # int: index of the episode's maze
    wall_material: jax.Array  # (n_wall_groups,) int: the material drawn for each wall texture group
    start_pos: jax.Array  # (2,) agent xy at the start
    prev_pos: jax.Array  # (2,) agent xy after the previous step
    prev_objects: jax.Array  # (n_objects, 2) objects' xy after the previous step
    step: jax.Array  # int: steps taken
    first_reach: jax.Array  # int: respawn tasks' first reached target (1 + index; 0: none yet)
    ret: jax.Array  # return so far
    contacts: jax.Array  # steps with a wall contact so far
    mover_cell: jax.Array  # (n_movers,) int: each mover's waypoint cell (movers.MazeTables flat index)
    mover_goal: jax.Array  # (n_movers,) int: each mover's goal cell


@dataclasses.dataclass(frozen=True)
class SpawnTable:
    """Per maze and per agent/object: padded candidate cells (world xy) and a validity mask."""

    xy: jax.Array  # (n_mazes, n_bodies, max_cells, 2)
    cell: jax.Array  # (n_mazes, n_bodies, max_cells) int: global cell id (for distinctness)
    valid: jax.Array  # (n_mazes, n_bodies, max_cells) bool


@dataclasses.dataclass(frozen=True)
class MazeGrids:
    """Padded wall grids of all mazes, for the wall proxies that follow the agent."""

    wall: jax.Array  # (n_mazes, rows, cols) bool
    offset: jax.Array  # (n_mazes, 2)
    shape: jax.Array  # (n_mazes, 2) real (rows, cols)
    scale: jax.Array  # (n_mazes,)
    half_height: jax.Array  # (n_mazes,)


def warp_available() -> str | None:
    """None when MJX's Warp physics can run here; else what is missing (a CUDA device, warp-lang)."""
    import mujoco.mjx.warp as mjxw

    missing = []
    if jax.devices()[0].platform not in ("gpu", "cuda"):
        missing.append(f"a CUDA device (JAX runs on {jax.devices()[0].platform})")
    if not mjxw.WARP_INSTALLED or mjxw.mujoco_warp is None:
        missing.append("MuJoCo Warp (`pip install warp-lang`; mujoco-mjx brings mujoco_warp)")
    return " and ".join(missing) or None


class Env:
    """Batched-ready ACI env of one config (its training or evaluation variant)."""

    def __init__(self, env_cfg: DictConfig):
        self.cfg = env_cfg
        self.world: World = build_world(env_cfg)
        # on this process's device (mjx's default, jax.devices()[0], is another process's in a
        # multi-process run: aci_jax.distributed)
        device = jax.local_devices()[0]
        self.physics_impl = str(env_cfg.get("physics_impl") or "jax")
        self.mx = mjx.put_model(self.world.model, impl=self.physics_impl, device=device)
        # Kinematics once, so static and mocap geoms start posed; steps never re-run it. (Warp's
        # make_data takes the MjModel; its contact pool holds max_contact_points per env.)
        data = (mjx.make_data(self.mx, impl="jax", device=device) if self.physics_impl == "jax" else
                mjx.make_data(self.world.model, impl="warp", device=device,
                              naconmax=int(env_cfg.n_envs) * int(env_cfg.get("max_contact_points", 4))))
        self._data0 = jax.jit(mjx.kinematics)(self.mx, data)
        self.agent_name = next(iter(self.world.agents))
        self.agent = self.world.agents[self.agent_name]
        self.agent_cfg = env_cfg.agents[self.agent_name]
        self.object_names = list(self.world.objects)
        self.bodies = [self.agent_name, *self.object_names]
        self.eyes_cfg = self.agent_cfg.eyes
        self.relative_heading = self.agent_cfg.get("heading", "absolute") == "relative"
        self.max_turn = float(np.deg2rad(float(self.agent_cfg.get("max_turn", 45.0))))  # radians per step
        self.default_eyes = EyeParams.from_config(self.eyes_cfg)
        self.buffer: EyeBuffer = static_buffer(self.eyes_cfg, env_cfg.render)
        self.optics: optics_lib.OpticsConfig | None = optics_config(self.eyes_cfg)
        if self.optics is not None:
            e = self.default_eyes
            msg = optics_lib.psf_window_warning(e.optics, self.optics, e.fov, e.resolution)
            if msg:
                warnings.warn(msg, stacklevel=2)
        self.eye_names = self.buffer.names(tuple(self.eyes_cfg.num_eyes))
        # The observation's image keys: one per eye slot, or the packed layout's one `pixels`.
        self.image_keys = ("pixels",) if self.buffer.packed else tuple(self.eye_names)
        self.scene: RenderScene = make_render_scene(self.world, tuple(env_cfg.render.background))
        self.n_mazes = len(self.world.mazes)
        self.frame_skip = int(env_cfg.frame_skip)
        self.max_steps = int(env_cfg.max_episode_steps)
        self.stack = int(env_cfg.frame_stack)
        self.task = make_task(env_cfg.task, self.object_names)
        self.spawn = self._spawn_table()
        self.grids = self._maze_grids()
        self._wall_choices = self._wall_material_choices()
        self.dt = float(env_cfg.physics_dt) * self.frame_skip
        # Scripted movers: (index into object_names, bound mover function); tables only if any.
        self.movers = [(k, bind_mover(env_cfg.agents[n].mover, self.bodies, self.world.objects[n].radius))
                       for k, n in enumerate(self.object_names) if env_cfg.agents[n].get("mover")]
        self.tables = maze_tables(self.world) if self.movers else None

    # -- static tables ---------------------------------------------------------------------------

    def _spawn_table(self) -> SpawnTable:
        per = []
        for k, info in enumerate(self.world.mazes):
            id_map = dict(self.cfg.mazes[info.maze.name].get("agent_id_map") or {})
            rows = []
            for name in self.bodies:
                cells = [c for g, names in id_map.items() if name in names
                         for c in info.maze.reset_cells.get(g, [])]
                rows.append(sorted(set(cells)))
            per.append(rows)
        n = max(len(c) for rows in per for c in rows)
        xy = np.zeros((self.n_mazes, len(self.bodies), n, 2), np.float32)
        cell = -np.ones((self.n_mazes, len(self.bodies), n), np.int32)
        for k, rows in enumerate(per):
            info = self.world.mazes[k]
            for b, cells in enumerate(rows):
                for c, (i, j) in enumerate(cells):
                    xy[k, b, c] = info.cell_world(i, j)
                    cell[k, b, c] = i * info.maze.shape[1] + j
        return SpawnTable(jnp.asarray(xy), jnp.asarray(cell), jnp.asarray(cell >= 0))

    def _maze_grids(self) -> MazeGrids:
        rows = max(m.maze.shape[0] for m in self.world.mazes)
        cols = max(m.maze.shape[1] for m in self.world.mazes)
        wall = np.zeros((self.n_mazes, rows, cols), bool)
        for k, m in enumerate(self.world.mazes):
            wall[k, : m.maze.shape[0], : m.maze.shape[1]] = m.maze.wall
        ms = [m.maze for m in self.world.mazes]
        return MazeGrids(jnp.asarray(wall), jnp.asarray(np.array([m.offset for m in self.world.mazes])),
                         jnp.asarray(np.array([m.shape for m in ms])),
                         jnp.asarray([m.scale for m in ms]), jnp.asarray([m.wall_half_height for m in ms]))

    def _wall_material_choices(self):
        """(n_groups, max_choices) candidate materials and the (ngeom,) group index of each wall."""
        groups, choices = [], []
        geom_group = -np.ones(self.world.model.ngeom, np.int32)
        for info in self.world.mazes:
            for g, mats in info.group_materials.items():
                geoms = np.unique(info.cell_geom[info.maze.wall_group == g])
                geom_group[geoms] = len(groups)
                groups.append(g)
                choices.append(mats)
        width = max((len(c) for c in choices), default=1)
        table = np.array([np.resize(c, width) for c in choices] or [[0]], np.int32)
        counts = np.array([len(c) for c in choices] or [1], np.int32)
        return jnp.asarray(table), jnp.asarray(counts), jnp.asarray(geom_group)

    # -- brax-style interface -----------------------------------------------------------------------

    @property
    def action_size(self) -> int:
        return 2

    @property
    def observation_size(self) -> dict[str, tuple]:
        b = self.buffer
        if b.packed:
            shapes = {"pixels": (self.stack, b.max_pixels, 3)}
        else:
            shapes = {name: (self.stack, b.height, b.width, 3) for name in self.eye_names}
        shapes.update(action=(self.stack, 2), contact=(self.stack, 1))
        return shapes

    def reset(self, rng: jax.Array, eyes: EyeParams | None = None) -> State:
        """A new episode in the first maze (`cycle`) or a random one (`random`)."""
        eyes = self.default_eyes if eyes is None else eyes
        rng, key_maze, key_ep = jax.random.split(rng, 3)
        maze = (jax.random.randint(key_maze, (), 0, self.n_mazes) if self.cfg.maze_selection == "random"
                else jnp.int32(0))
        data, episode = self._new_episode(key_ep, maze)
        data = self._place_proxies(data, maze)
        info = dict(rng=rng, eyes=eyes, episode=episode)
        if self.optics is not None:
            info.update(optics=self.prepare_optics(eyes))
        frame = self._observe(data, info, jnp.zeros(2), jnp.bool_(False))
        obs = jax.tree.map(lambda f: jnp.zeros((self.stack, *f.shape)).at[-1].set(f), frame)
        zero = jnp.float32(0.0)
        metrics = {k: zero for k in ("return", "length", "success", "failure", "contacts", "episode_done")}
        info.update(truncation=zero)
        return State(data, obs, zero, zero, metrics, info)

    def step(self, state: State, action: jax.Array) -> State:
        info = dict(state.info)
        ep: Episode = info["episode"]
        action = jnp.clip(action, -1.0, 1.0)
        data = self._control(state.pipeline_state, action)
        data, contacts = jax.lax.scan(self._substep, data, None, length=self.frame_skip)
        contact = contacts.any()

        rng, key_hook, key_reset = jax.random.split(info["rng"], 3)
        pos = data.qpos[self.agent.qpos_adr[:2]]
        data, ep = self._move(data, ep, jax.random.fold_in(key_hook, MOVER_SALT))
        ctx = StepContext(pos=pos, prev_pos=ep.prev_pos, start_pos=ep.start_pos,
                          objects=self.object_xy(data), prev_objects=ep.prev_objects, contact=contact,
                          step=ep.step + 1, max_steps=self.max_steps, ret=ep.ret)
        ctx = ctx.replace(terminated=self.task.terminated(ctx), truncated=self.task.truncated(ctx))
        reward = self.task.reward(ctx)
        timeout = ctx.step >= self.max_steps
        done = ctx.terminated | ctx.truncated | timeout

        first = jnp.where(ep.first_reach > 0, ep.first_reach, self.task.first_reach(ctx))
        data, ep = self._respawn(data, ep, self.task.effects(ctx).respawn, key_hook)
        success, failure = self.task.outcome(ctx, done, first)
        metrics = {"return": ep.ret + reward, "length": ctx.step.astype(jnp.float32),
                   "success": success.astype(jnp.float32), "failure": failure.astype(jnp.float32),
                   "contacts": ep.contacts + contact, "episode_done": done.astype(jnp.float32)}

        # Auto-reset: a finished episode continues as a fresh one, chosen by the maze schedule.
        next_maze = (ep.maze + 1) % self.n_mazes if self.cfg.maze_selection == "cycle" else \
            jax.random.randint(key_reset, (), 0, self.n_mazes)
        new_data, new_ep = self._new_episode(key_reset, next_maze)
        ep = ep.replace(prev_pos=pos, prev_objects=self.object_xy(data), step=ctx.step, first_reach=first,
                        ret=metrics["return"], contacts=metrics["contacts"])
        pick = lambda a, b: jnp.where(done, a, b)
        # Only the state fields differ: everything else is recomputed by the next mjx.step.
        data = data.replace(**{f: pick(getattr(new_data, f), getattr(data, f)) for f in RESET_FIELDS})
        ep = jax.tree.map(pick, new_ep, ep)
        data = self._place_proxies(data, ep.maze)
        last_action = jnp.where(done, 0.0, action)
        info.update(rng=rng, episode=ep,
                    truncation=(timeout & ~ctx.terminated & ~ctx.truncated).astype(jnp.float32))
        frame = self._observe(data, info, last_action, jnp.where(done, False, contact))
        obs = jax.tree.map(
            lambda s, f: jnp.where(done, jnp.zeros_like(s).at[-1].set(f),
                                   jnp.concatenate([s[1:], f[None]], 0)), state.obs, frame)
        return state.replace(pipeline_state=data, obs=obs, reward=reward,
                             done=done.astype(jnp.float32), metrics=metrics, info=info)

    # -- pieces ------------------------------------------------------------------------------------

    def steer(self, data: mjx.Data, heading: jax.Array) -> jax.Array:
        """The a1 that sets the heading target to `heading` (radians), or turns towards it as far
        as one step allows (`heading: relative`)."""
        if self.relative_heading:
            turn = jnp.angle(jnp.exp(1j * (heading - data.qpos[self.agent.qpos_adr[2]])))
            return jnp.clip(turn / self.max_turn, -1.0, 1.0)
        return jnp.angle(jnp.exp(1j * heading)) / jnp.pi

    def _control(self, data: mjx.Data, action: jax.Array) -> mjx.Data:
        """Point agent: speed·(a0 + 1)/2 along the current heading; a1 sets the heading target.

        `heading: absolute` (ACI): the target is a1·π. `heading: relative`: the target is the
        current heading turned by a1·max_turn degrees.
        """
        v = float(self.agent_cfg.speed) * (action[0] + 1) / 2
        yaw = data.qpos[self.agent.qpos_adr[2]]
        target = yaw + action[1] * self.max_turn if self.relative_heading else action[1] * jnp.pi
        ctrl = data.ctrl.at[self.agent.actuators].set(jnp.stack([v * jnp.cos(yaw), v * jnp.sin(yaw), target]))
        return data.replace(ctrl=ctrl)

    def _substep(self, data: mjx.Data, _):
        data = mjx.step(self.mx, data)
        if self.physics_impl == "jax":
            return data, jnp.any(data._impl.contact.dist < 0)
        # MuJoCo Warp: the first `nacon` slots of its contact pool are this step's contacts (not yet
        # checked on a device: benchmarks/gpu_check.py measures this path)
        imp = data._impl
        live = jnp.arange(imp.contact__dist.shape[-1]) < imp.nacon[..., None] if imp.nacon.ndim else \
            jnp.arange(imp.contact__dist.shape[-1]) < imp.nacon
        return data, jnp.any(live & (imp.contact__dist < 0))

    def object_xy(self, data: mjx.Data) -> jax.Array:
        """(n_objects, 2) xy of the task's objects, in `object_names` order (privileged: for tasks,
        scripted policies and diagnostics, never the agent's observation)."""
        ids = jnp.asarray([self.world.objects[n].mocap for n in self.object_names], jnp.int32)
        return data.mocap_pos[ids, :2] if self.object_names else jnp.zeros((0, 2))

    def _sample_cells(self, key: jax.Array, maze: jax.Array, bodies: list[int],
                      taken: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Distinct random spawn cells for `bodies` (indices into self.bodies), avoiding `taken`."""
        xy = []
        for b, k in zip(bodies, jax.random.split(key, len(bodies))):
            cells = self.spawn.cell[maze, b]
            ok = self.spawn.valid[maze, b] & ~jnp.isin(cells, taken)
            c = jnp.argmax(jnp.where(ok, jax.random.gumbel(k, ok.shape), -jnp.inf))
            taken = taken.at[b].set(cells[c])
            xy.append(self.spawn.xy[maze, b, c])
        return jnp.stack(xy), taken

    def _new_episode(self, key: jax.Array, maze: jax.Array) -> tuple[mjx.Data, Episode]:
        k_cells, k_yaw, k_jit, k_tex = jax.random.split(key, 4)
        xy, _ = self._sample_cells(k_cells, maze, list(range(len(self.bodies))),
                                   -2 * jnp.ones(len(self.bodies), jnp.int32))
        scale = self.grids.scale[maze]
        agent_xy = xy[0] + float(self.cfg.spawn_jitter) * scale * jax.random.uniform(k_jit, (2,), minval=-.5, maxval=.5)
        init_yaw = self.agent_cfg.get("init_yaw")
        yaw = (jnp.deg2rad(float(init_yaw)) if init_yaw is not None
               else jax.random.uniform(k_yaw, (), minval=-jnp.pi, maxval=jnp.pi))
        qpos = self._data0.qpos.at[self.agent.qpos_adr].set(jnp.array([agent_xy[0], agent_xy[1], yaw]))
        ctrl = self._data0.ctrl.at[self.agent.actuators[2]].set(yaw)
        mocap = self._data0.mocap_pos
        for b, name in enumerate(self.object_names, start=1):
            o = self.world.objects[name]
            mocap = mocap.at[o.mocap].set(jnp.array([xy[b, 0], xy[b, 1], o.radius]))
        data = self._data0.replace(qpos=qpos, ctrl=ctrl, mocap_pos=mocap)
        table, counts, _ = self._wall_choices
        pick = jax.random.randint(k_tex, (table.shape[0],), 0, counts)
        cells = self._mover_cells(maze, xy[1:])
        episode = Episode(maze=maze, wall_material=table[jnp.arange(table.shape[0]), pick],
                          start_pos=agent_xy, prev_pos=agent_xy, prev_objects=xy[1:], step=jnp.int32(0),
                          first_reach=jnp.int32(0), ret=jnp.float32(0.0), contacts=jnp.float32(0.0),
                          mover_cell=cells, mover_goal=cells)
        return data, episode

    def _mover_cells(self, maze: jax.Array, objects: jax.Array) -> jax.Array:
        """(n_movers,) the cells under the movers among `objects` (n_objects, 2) xy."""
        if not self.movers:
            return jnp.zeros(0, jnp.int32)
        return jnp.stack([self.tables.cell_of(maze, objects[k]) for k, _ in self.movers])

    def _move(self, data: mjx.Data, ep: Episode, key: jax.Array) -> tuple[mjx.Data, Episode]:
        """Every mover's step, from the positions after this step's physics (all at once)."""
        if not self.movers:
            return data, ep
        objects = self.object_xy(data)
        world = MoverWorld(bodies=jnp.concatenate([data.qpos[self.agent.qpos_adr[:2]][None], objects]),
                           maze=ep.maze, tables=self.tables, dt=self.dt)
        mocap, cells, goals = data.mocap_pos, [], []
        for m, ((k, fn), key_m) in enumerate(zip(self.movers, jax.random.split(key, len(self.movers)))):
            me = fn(Mover(objects[k], ep.mover_cell[m], ep.mover_goal[m]), world, key_m)
            mocap = mocap.at[self.world.objects[self.object_names[k]].mocap, :2].set(me.pos)
            cells.append(me.cell)
            goals.append(me.goal)
        return data.replace(mocap_pos=mocap), ep.replace(mover_cell=jnp.stack(cells), mover_goal=jnp.stack(goals))

    def _place_proxies(self, data: mjx.Data, maze: jax.Array) -> mjx.Data:
        """Move the maze's wall proxies onto the wall cells around the agent; park all others."""
        if self.world.proxy_mocap.size == 0:
            return data
        g = self.grids
        x, y = data.qpos[self.agent.qpos_adr[0]], data.qpos[self.agent.qpos_adr[1]]
        rows, cols = g.shape[maze, 0], g.shape[maze, 1]
        s = g.scale[maze]
        lx, ly = x - g.offset[maze, 0], y - g.offset[maze, 1]
        i = jnp.floor((rows * s / 2 - ly) / s).astype(jnp.int32) + NEIGHBOURS[:, 0]
        j = jnp.floor((lx + cols * s / 2) / s).astype(jnp.int32) + NEIGHBOURS[:, 1]
        inside = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        wall = inside & g.wall[maze, jnp.clip(i, 0, g.wall.shape[1] - 1), jnp.clip(j, 0, g.wall.shape[2] - 1)]
        cx = (j + 0.5) * s - cols * s / 2 + g.offset[maze, 0]
        cy = rows * s / 2 - (i + 0.5) * s + g.offset[maze, 1]
        here = jnp.stack([cx, cy, jnp.where(wall, g.half_height[maze], PROXY_PARK_Z)], -1)
        parked = jnp.array([0.0, 0.0, PROXY_PARK_Z])
        mocap = data.mocap_pos
        for k in range(self.n_mazes):
            ids = jnp.asarray(self.world.proxy_mocap[k])
            mocap = mocap.at[ids].set(jnp.where(maze == k, here, parked))
        return data.replace(mocap_pos=mocap)

    def _respawn(self, data: mjx.Data, ep: Episode, respawn: jax.Array, key: jax.Array) -> tuple[mjx.Data, Episode]:
        """Move the objects flagged in `respawn` (n_objects,) to fresh spawn cells of their groups (a
        respawned mover starts its path afresh from there)."""
        if not self.task.step_fns:
            return data, ep
        key = jax.random.split(key, len(self.task.step_fns))[0]
        bodies = list(range(1, len(self.bodies)))
        xy, _ = self._sample_cells(key, ep.maze, bodies, -2 * jnp.ones(len(self.bodies), jnp.int32))
        mocap = data.mocap_pos
        for k, name in enumerate(self.object_names):
            o = self.world.objects[name]
            mocap = mocap.at[o.mocap, :2].set(jnp.where(respawn[k], xy[k], mocap[o.mocap, :2]))
        if self.movers:
            moved = respawn[jnp.asarray([k for k, _ in self.movers])]
            cells = self._mover_cells(ep.maze, xy)
            ep = ep.replace(mover_cell=jnp.where(moved, cells, ep.mover_cell),
                            mover_goal=jnp.where(moved, cells, ep.mover_goal))
        return data.replace(mocap_pos=mocap), ep

    def geom_xpos(self, data: mjx.Data) -> jax.Array:
        """Geom positions of the current state: spheres posed from qpos / mocap_pos directly.

        mjx.step's geom_xpos lags one sub-step and misses mocap moves made after it (reset,
        respawn); the eyes need only the spheres' centres, which are the bodies' own positions.
        """
        pos = data.qpos[self.agent.qpos_adr]
        xpos = data.geom_xpos.at[self.agent.geom].set(jnp.array([pos[0], pos[1], self.agent.radius]))
        for o in self.world.objects.values():
            xpos = xpos.at[o.geom].set(data.mocap_pos[o.mocap])
        return xpos

    def render_eyes(self, data: mjx.Data, eyes: EyeParams, wall_material: jax.Array,
                    optics: dict | None = None, key: jax.Array | None = None):
        """Eye images (max_eyes, H, W, 3), depth (max_eyes, H, W) and geom ids (max_eyes, H, W, s²)
        for display and diagnostics. Packed layout: `render_packed`'s P pixels unpacked (0, inf
        and -1 outside the individual's pixels); buffer layout: every buffer pixel is cast.

        Each pixel averages its s² sub-rays; each sub-ray's texture colour is box-filtered over its
        footprint (ray differentials from the eyes' fov and resolution, which are data), so a pixel
        is the average of the scene over its patch of view and fine stripes blend as they would on
        a real sensor.

        Optics eye (buffer layout only): `optics` are `prepare_optics(eyes)` (computed here when None)
        and `key` draws the sensor noise (None: no noise). Depth and geom ids are those of the field
        of view."""
        b = self.buffer
        if b.packed:
            rgb, depth, geom = self.render_packed(data, eyes, wall_material)
            return (unpack(rgb, eyes, b), unpack(depth, eyes, b, axis=-1, fill=jnp.inf),
                    unpack(geom, eyes, b, fill=-1))
        m = 0 if self.optics is None else self.optics.margin
        pos = data.qpos[self.agent.qpos_adr]
        origin = jnp.array([pos[0], pos[1], self.agent.radius])
        origins, dirs, step_x, step_y, axes = eye_rays(eyes, b, origin, pos[2], self.agent.radius, margin=m,
                                                       differentials=True)
        per_ray = lambda x: jnp.broadcast_to(x[:, None, None, None], dirs.shape).reshape(-1, 3)
        rgb, depth, geom = cast_rays(self.scene, self.geom_xpos(data), data.geom_xmat, per_ray(origins),
                                     dirs.reshape(-1, 3), exclude_geom=self.agent.geom,
                                     wall_material=self._wall_material(wall_material),
                                     ray_dx=per_ray(step_x), ray_dy=per_ray(step_y), view_axis=per_ray(axes))
        shape = dirs.shape[:-1]
        mask = pixel_mask(eyes, b)
        if self.optics is None:
            img = rgb.reshape(*shape, 3).mean(-2) * mask[..., None]
            return img, depth.reshape(shape).min(-1), geom.reshape(shape)
        crop = lambda x: x[:, m:m + b.height, m:m + b.width]
        depth, geom = crop(depth.reshape(shape)), crop(geom.reshape(shape))
        # Each eye's PSF is that of the mean inverse depth over its pixels' rays (misses: 1/∞ = 0).
        inv = jnp.where(jnp.isfinite(depth), 1.0 / jnp.maximum(depth, 1e-3), 0.0).mean(-1) * mask
        inv = inv.sum((1, 2)) / jnp.maximum(mask.sum((1, 2)), 1)
        if optics is None:
            optics = self.prepare_optics(eyes)
        sub = optics_lib.subpixel_image(rgb.reshape(*shape, 3), b.supersample)
        img = optics_lib.form_image(sub, inv, optics, self.optics, b.supersample, key) * mask[..., None]
        return img, depth.min(-1), geom

    def prepare_optics(self, eyes: EyeParams) -> dict:
        """The optics eye's PSFs and throughput for `eyes` (fixed within an episode)."""
        return optics_lib.prepare(eyes.optics, self.optics, eyes.fov, eyes.resolution, self.buffer.supersample)

    def eye_images(self, obs: dict, eyes: EyeParams) -> jax.Array:
        """(max_eyes, H, W, 3): the current frame of each eye in an observation, as the agent saw it
        (packed layout: the `pixels` unpacked with the individual's `eyes`)."""
        if self.buffer.packed:
            return unpack(obs["pixels"][-1], eyes, self.buffer)
        return jnp.stack([obs[name][-1] for name in self.eye_names])

    def render_packed(self, data: mjx.Data, eyes: EyeParams, wall_material: jax.Array):
        """Packed layout: pixels (P, 3) (zeros in unused slots), depth (P,) and geom ids (P, s²) of
        the slots `geometry.packed_slots` lays out; P · s² rays."""
        b = self.buffer
        pos = data.qpos[self.agent.qpos_adr]
        origin = jnp.array([pos[0], pos[1], self.agent.radius])
        origins, dirs, step_x, step_y, axes = packed_rays(eyes, b, origin, pos[2], self.agent.radius,
                                                          differentials=True)
        per_ray = lambda x: jnp.broadcast_to(x[:, None], dirs.shape).reshape(-1, 3)
        rgb, depth, geom = cast_rays(self.scene, self.geom_xpos(data), data.geom_xmat, per_ray(origins),
                                     dirs.reshape(-1, 3), exclude_geom=self.agent.geom,
                                     wall_material=self._wall_material(wall_material),
                                     ray_dx=per_ray(step_x), ray_dy=per_ray(step_y), view_axis=per_ray(axes))
        shape = dirs.shape[:-1]
        valid = packed_slots(eyes, b)[3]
        img = rgb.reshape(*shape, 3).mean(-2) * valid[:, None]
        return img, depth.reshape(shape).min(-1), geom.reshape(shape)

    def _wall_material(self, group_material: jax.Array) -> jax.Array:
        _, _, geom_group = self._wall_choices
        return jnp.where(geom_group >= 0, group_material[jnp.maximum(geom_group, 0)], -1)

    def _observe(self, data: mjx.Data, info: dict, last_action: jax.Array, contact: jax.Array) -> dict:
        """The frame of the current state; the optics eye's noise key is folded out of the rng the
        state carries (`info['rng']`, fresh every step), so other draws are unchanged."""
        if self.buffer.packed:
            obs = {"pixels": self.render_packed(data, info["eyes"], info["episode"].wall_material)[0]}
        else:
            if self.optics is None:
                img, _, _ = self.render_eyes(data, info["eyes"], info["episode"].wall_material)
            else:
                img, _, _ = self.render_eyes(data, info["eyes"], info["episode"].wall_material, info["optics"],
                                             jax.random.fold_in(info["rng"], NOISE_SALT))
            obs = {name: img[k] for k, name in enumerate(self.eye_names)}
        obs.update(action=last_action.astype(jnp.float32), contact=contact.astype(jnp.float32)[None])
        return obs


def make_env(cfg: DictConfig, eval: bool = False) -> Env:
    """The env of a composed config (`eval=True`: its evaluation variant)."""
    return Env(env_config(cfg, eval=eval))
