"""Scripted movers: non-learning bodies whose motion is computed from the true state inside `Env.step`.

A mover is one of the task's objects with a `mover: {fn: <name>, ...}` section in its agent config;
`fn` names a function of `MOVERS` and the other keys are its keyword arguments (like the reward
functions of `aci_jax.envs.tasks`). Body names in the arguments (`target`, `predators`) are bound to
body indices when the env is built ('agent' is the learning agent). Each step, after the physics, every
mover function maps (its own `Mover` state, the `MoverWorld`, a key) to its new state; the env writes
the new positions into the objects' mocap bodies, so the eyes, the reach / termination functions and
the videos all see the movers where they are.

Movers are mocap bodies that never enter walls, not physics bodies driven by the point agent's
controller. A physics mover would add 3 DoFs, its own actuators and its own agent-wall contacts per
mover to every MJX sub-step (and its own set of wall proxies, which follow one body only), for motion
whose every detail is scripted anyway; a mocap mover costs a table lookup and a few flops per step.
The maze movers never need a wall to stop them: they travel between the centres of side-adjacent free
cells (the straight line between two such centres stays inside the two cells), and the prey slides
along walls by refusing moves whose footprint would enter a wall cell.

Shortest paths are a next-cell table per maze (`aci_jax.world.maze.next_cell_table`, numpy BFS at
env build time): a maze mover's step is one lookup whatever the maze's size.

Speeds are the original's action values a0 in [-1, 1]; like the point agent, a mover's speed is
max_speed·(a0 + 1)/2 m/s (max_speed 1 m/s: the point agent's `speed`). The original's thresholds are
the waypoint distances of its corner-cutting physical agents; here a walker's `threshold` is the
distance at which its random goal counts as reached (then it draws the next), and a follower heads
straight for its target once it is in the target's cell.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from aci_jax.world.maze import next_cell_table

_EPS = 1e-4  # metres: a mover this close to its waypoint's centre is on it


@struct.dataclass
class MazeTables:
    """Static per-maze grid tables for movers (M mazes padded to R x C cells; flat cell = i·C + j)."""

    wall: jax.Array  # (M, R, C) bool, padding counts as wall
    offset: jax.Array  # (M, 2) world xy of each maze's centre
    shape: jax.Array  # (M, 2) real rows, cols of each maze
    scale: jax.Array  # (M,)
    nxt: jax.Array  # (M, R·C, R·C) int32: next cell from a cell towards a goal (`next_cell_table`)
    free: jax.Array  # (M, R·C) bool

    @property
    def cols(self) -> int:
        return self.wall.shape[2]

    def rowcol(self, maze: jax.Array, xy: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(i, j) of the cell under world xy (may lie outside the maze)."""
        rows, cols, s = self.shape[maze, 0], self.shape[maze, 1], self.scale[maze]
        lx, ly = xy[..., 0] - self.offset[maze, 0], xy[..., 1] - self.offset[maze, 1]
        i = jnp.floor((rows * s / 2 - ly) / s).astype(jnp.int32)
        j = jnp.floor((lx + cols * s / 2) / s).astype(jnp.int32)
        return i, j

    def cell_of(self, maze: jax.Array, xy: jax.Array) -> jax.Array:
        """Flat index of the cell under world xy (clipped into the maze)."""
        i, j = self.rowcol(maze, xy)
        i = jnp.clip(i, 0, self.shape[maze, 0].astype(jnp.int32) - 1)
        j = jnp.clip(j, 0, self.shape[maze, 1].astype(jnp.int32) - 1)
        return i * self.cols + j

    def centre(self, maze: jax.Array, cell: jax.Array) -> jax.Array:
        """World xy of a flat cell's centre."""
        i, j = jnp.divmod(cell, self.cols)
        rows, cols, s = self.shape[maze, 0], self.shape[maze, 1], self.scale[maze]
        x = (j + 0.5) * s - cols * s / 2 + self.offset[maze, 0]
        y = rows * s / 2 - (i + 0.5) * s + self.offset[maze, 1]
        return jnp.stack([x, y], -1)

    def is_free(self, maze: jax.Array, xy: jax.Array) -> jax.Array:
        """Whether world xy lies on a free cell of the maze (outside: no)."""
        i, j = self.rowcol(maze, xy)
        inside = (i >= 0) & (i < self.shape[maze, 0]) & (j >= 0) & (j < self.shape[maze, 1])
        wall = self.wall[maze, jnp.clip(i, 0, self.wall.shape[1] - 1), jnp.clip(j, 0, self.cols - 1)]
        return inside & ~wall

    def random_free(self, maze: jax.Array, key: jax.Array) -> jax.Array:
        """A uniformly random free cell of the maze (flat index)."""
        free = self.free[maze]
        return jnp.argmax(jnp.where(free, jax.random.gumbel(key, free.shape), -jnp.inf)).astype(jnp.int32)


def maze_tables(world) -> MazeTables:
    """The mover tables of a built World (numpy BFS per maze; runs once, outside jit)."""
    mazes = [m.maze for m in world.mazes]
    rows, cols = max(m.shape[0] for m in mazes), max(m.shape[1] for m in mazes)
    wall = np.ones((len(mazes), rows, cols), bool)
    for k, m in enumerate(mazes):
        wall[k, : m.shape[0], : m.shape[1]] = m.wall
    nxt = np.stack([next_cell_table(w) for w in wall])
    return MazeTables(wall=jnp.asarray(wall), offset=jnp.asarray(np.array([m.offset for m in world.mazes]), jnp.float32),
                      shape=jnp.asarray(np.array([m.shape for m in mazes]), jnp.float32),
                      scale=jnp.asarray([m.scale for m in mazes], jnp.float32), nxt=jnp.asarray(nxt),
                      free=jnp.asarray(~wall.reshape(len(mazes), -1)))


@struct.dataclass
class Mover:
    """One mover's state: its position and, for the maze movers, the cell whose centre it heads for
    (its waypoint) and its goal cell (flat indices of `MazeTables`)."""

    pos: jax.Array  # (2,)
    cell: jax.Array  # int32
    goal: jax.Array  # int32


@struct.dataclass
class MoverWorld:
    """What a mover function sees (privileged, the true state after this step's physics)."""

    bodies: jax.Array  # (n_bodies, 2) xy of the env's bodies: the agent first, then the objects
    maze: jax.Array  # int: the episode's maze
    tables: MazeTables
    dt: float = struct.field(pytree_node=False)  # seconds per env step


def _step_length(speed: float, max_speed: float, dt: float) -> float:
    """Metres per env step of the speed action a0: max_speed·(a0 + 1)/2 m/s for dt s."""
    return max_speed * (speed + 1.0) / 2.0 * dt


def _toward(pos: jax.Array, target: jax.Array, length: float) -> tuple[jax.Array, jax.Array]:
    """Move `length` towards target, stopping on it; (new position, arrived)."""
    d = target - pos
    n = jnp.linalg.norm(d)
    arrived = n <= length
    return jnp.where(arrived, target, pos + d / jnp.maximum(n, _EPS) * length), arrived


# -- movers ----------------------------------------------------------------------------------------

def maze_random(me: Mover, world: MoverWorld, key: jax.Array, speed: float = -0.825, threshold: float = 4.0,
                max_speed: float = 1.0) -> Mover:
    """Walk the shortest path of free cells to a random free cell; within `threshold` m of it (or when
    it cannot be reached) draw the next."""
    t, maze = world.tables, world.maze
    unreachable = (t.nxt[maze, me.goal, me.cell] == me.cell) & (me.cell != me.goal)
    done = (jnp.linalg.norm(me.pos - t.centre(maze, me.goal)) <= threshold) | unreachable
    goal = jnp.where(done, t.random_free(maze, key), me.goal)
    here = jnp.linalg.norm(me.pos - t.centre(maze, me.cell)) < _EPS  # at the waypoint: the next one
    cell = jnp.where(here, t.nxt[maze, goal, me.cell], me.cell)
    pos, _ = _toward(me.pos, t.centre(maze, cell), _step_length(speed, max_speed, world.dt))
    return Mover(pos, cell, goal)


def maze_optimal(me: Mover, world: MoverWorld, key: jax.Array, target: int, speed: float = -0.75,
                 max_speed: float = 1.0) -> Mover:
    """Follow the shortest path of free cells to the target body's cell, then head straight for it."""
    t, maze = world.tables, world.maze
    goal_xy = world.bodies[target]
    goal = t.cell_of(maze, goal_xy)
    here = jnp.linalg.norm(me.pos - t.centre(maze, me.cell)) < _EPS
    cell = jnp.where(here & (me.cell != goal), t.nxt[maze, goal, me.cell], me.cell)
    # In the target's cell (or entering it from a side neighbour): straight at the target, a line
    # inside the two cells. Left behind there: back to the waypoint's centre first.
    waypoint = jnp.where(cell == goal, goal_xy, t.centre(maze, cell))
    pos, _ = _toward(me.pos, waypoint, _step_length(speed, max_speed, world.dt))
    return Mover(pos, cell, goal)


def predator(me: Mover, world: MoverWorld, key: jax.Array, speed: float = -0.75, max_speed: float = 1.0) -> Mover:
    """A maze-optimal follower whose target is the learning agent."""
    return maze_optimal(me, world, key, target=0, speed=speed, max_speed=max_speed)


def prey(me: Mover, world: MoverWorld, key: jax.Array, predators: tuple[int, ...] = (0,), speed: float = -0.8,
         noise: float = 1.0, max_speed: float = 1.0, radius: float = 0.5) -> Mover:
    """Flee the nearest predator (by default the learning agent), heading away from it plus
    N(0, noise²) radians; a move whose footprint (`radius`, bound to the body's) would enter a wall
    keeps only its free axis, else the prey stays."""
    t, maze = world.tables, world.maze
    hunters = world.bodies[jnp.asarray(predators)]
    away = me.pos - hunters[jnp.argmin(jnp.linalg.norm(hunters - me.pos, axis=-1))]
    heading = jnp.arctan2(away[1], away[0]) + noise * jax.random.normal(key)
    d = _step_length(speed, max_speed, world.dt) * jnp.array([jnp.cos(heading), jnp.sin(heading)])
    ring = jnp.array([[0.0, 0.0], [radius, 0.0], [-radius, 0.0], [0.0, radius], [0.0, -radius]])
    clear = lambda p: jnp.all(t.is_free(maze, p + ring))
    options = jnp.stack([me.pos + d, me.pos + d * jnp.array([1.0, 0.0]), me.pos + d * jnp.array([0.0, 1.0])])
    ok = jax.vmap(clear)(options)
    pos = jnp.where(ok.any(), options[jnp.argmax(ok)], me.pos)
    return Mover(pos, t.cell_of(maze, pos), me.goal)


MOVERS = {f.__name__: f for f in (maze_random, maze_optimal, predator, prey)}
BODY_ARGS = {"target": False, "predators": True}  # arguments naming bodies (True: a list of them)
BOUND_ARGS = ("radius",)  # bound from the body's own config, never set in a mover section
FIXED_ARGS = ("me", "world", "key")


def mover_params(fn: str) -> list[str]:
    """The keyword arguments a mover section may set for `fn`."""
    return sorted(set(inspect.signature(MOVERS[fn]).parameters) - set(FIXED_ARGS) - set(BOUND_ARGS))


def bind_mover(spec: Mapping[str, Any], bodies: list[str], radius: float) -> Callable:
    """A mover section ({fn, **kwargs}) as a function (me, world, key) -> Mover, body names bound
    to their indices in `bodies`."""
    kwargs = dict(spec)
    fn = MOVERS[kwargs.pop("fn")]
    for arg, many in BODY_ARGS.items():
        if arg in kwargs:
            kwargs[arg] = tuple(bodies.index(b) for b in kwargs[arg]) if many else bodies.index(kwargs[arg])
    if "radius" in inspect.signature(fn).parameters:
        kwargs["radius"] = radius
    return lambda me, world, key: fn(me, world, key, **kwargs)


def validate_mover(spec: Mapping[str, Any], bodies: list[str], key: str) -> None:
    """Unknown mover, unknown argument or unknown body: a ConfigError naming the key and the valid values
    (the arguments' values: `aci_jax.config.MOVER`)."""
    from aci_jax.config import ConfigError

    if not isinstance(spec, Mapping):
        raise ConfigError(f"{key}={spec!r} must be a section like {{fn: maze_random}}; valid fn: {sorted(MOVERS)}")
    fn = spec.get("fn")
    if fn not in MOVERS:
        raise ConfigError(f"{key}.fn={fn!r}; valid: {sorted(MOVERS)}")
    valid = mover_params(fn)
    extra = sorted(set(spec) - set(valid) - {"fn"})
    if extra:
        raise ConfigError(f"{key}: unknown argument(s) {extra} for mover '{fn}'; valid: {valid}")
    if fn == "maze_optimal" and "target" not in spec:
        raise ConfigError(f"{key}.target is missing (the body maze_optimal follows); valid: {bodies}")
    for arg, many in BODY_ARGS.items():
        if arg not in spec:
            continue
        names = list(spec[arg]) if many and not isinstance(spec[arg], str) else [spec[arg]]
        if many and isinstance(spec[arg], str):
            raise ConfigError(f"{key}.{arg}={spec[arg]!r} must be a list of body names; valid: {bodies}")
        for name in names:
            if name not in bodies:
                raise ConfigError(f"{key}.{arg}: '{name}' is not a body of the env; valid: {bodies}")
