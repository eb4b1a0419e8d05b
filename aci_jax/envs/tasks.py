"""Tasks as config: named lists of small reward / termination / truncation / step functions.

A task section looks like `rewards: {goal: {fn: reach, target: goal, reward: 1.0}, ...}`. Each entry
names a function of this module's registries and its keyword arguments; `target` names an object
and is bound to its index at build time. A step's reward is the sum of the reward terms;
terminated (success) / truncated (failure) are the OR of their lists.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class StepContext:
    """What task functions see after the physics of one env step (one env, unbatched)."""

    pos: jax.Array  # (2,) agent xy
    prev_pos: jax.Array  # (2,)
    start_pos: jax.Array  # (2,) agent xy at episode start
    objects: jax.Array  # (n_objects, 2) object xy
    prev_objects: jax.Array  # (n_objects, 2)
    contact: jax.Array  # bool: agent touched a wall during any physics sub-step
    step: jax.Array  # int: steps taken in this episode, this one included
    max_steps: int
    ret: jax.Array  # return accumulated before this step
    terminated: jax.Array = False
    truncated: jax.Array = False

    def distance(self, target: int) -> jax.Array:
        return jnp.linalg.norm(self.pos - self.objects[target])

    def prev_distance(self, target: int) -> jax.Array:
        return jnp.linalg.norm(self.prev_pos - self.prev_objects[target])

    @property
    def quickness(self) -> jax.Array:
        """Remaining fraction of the episode: 1 at the start, 0 at the time limit."""
        return 1.0 - self.step / self.max_steps


# -- rewards -------------------------------------------------------------------------------------

def reach(ctx: StepContext, target: int, distance: float = 1.0, reward: float = 1.0,
          quickness: bool = False) -> jax.Array:
    """`reward` when within `distance` of the target, times the quickness if asked."""
    scale = ctx.quickness if quickness else 1.0
    return jnp.where(ctx.distance(target) < distance, reward * scale, 0.0)


def distance_decrease(ctx: StepContext, target: int, factor: float = 1.0) -> jax.Array:
    """`factor` × how much closer to the target this step brought the agent."""
    return factor * (ctx.prev_distance(target) - ctx.distance(target))


def distance_from_start(ctx: StepContext, factor: float = 1.0) -> jax.Array:
    """`factor` × increase of the distance from the episode's start position."""
    return factor * (jnp.linalg.norm(ctx.pos - ctx.start_pos)
                     - jnp.linalg.norm(ctx.prev_pos - ctx.start_pos))


def contact(ctx: StepContext, penalty: float = -1.0) -> jax.Array:
    """`penalty` on every step with a wall contact."""
    return jnp.where(ctx.contact, penalty, 0.0)


def on_truncation(ctx: StepContext, penalty: float = -1.0) -> jax.Array:
    """`penalty` on the step a truncation (failure) fires."""
    return jnp.where(ctx.truncated, penalty, 0.0)


def on_termination(ctx: StepContext, reward: float = 1.0) -> jax.Array:
    """`reward` on the step a termination (success) fires."""
    return jnp.where(ctx.terminated, reward, 0.0)


def per_step(ctx: StepContext, reward: float = -0.1) -> jax.Array:
    """A constant every step (e.g. a time penalty)."""
    return jnp.asarray(reward, jnp.float32)


# -- terminations / truncations ------------------------------------------------------------------

def reached(ctx: StepContext, target: int, distance: float = 1.0) -> jax.Array:
    """Within `distance` of the target."""
    return ctx.distance(target) < distance


def low_return(ctx: StepContext, threshold: float = -50.0) -> jax.Array:
    """The cumulative reward fell below `threshold`."""
    return ctx.ret < threshold


# -- step functions: effects on the world after the step was scored ----------------------------------

@struct.dataclass
class Effects:
    """What step functions ask of the env after a step."""

    respawn: jax.Array  # (n_objects,) bool: objects moved to fresh spawn cells of their group


def respawn_on_reach(ctx: StepContext, targets: tuple[int, ...], distance: float = 1.0) -> Effects:
    """Reached targets respawn (evaluation variants: episodes go on after a reach)."""
    hit = jnp.stack([ctx.distance(t) < distance for t in targets])
    return Effects(respawn=jnp.zeros(ctx.objects.shape[0], bool).at[jnp.asarray(targets)].set(hit))


REWARDS = {f.__name__: f for f in (reach, distance_decrease, distance_from_start, contact,
                                   on_truncation, on_termination, per_step)}
DONES = {f.__name__: f for f in (reached, low_return)}
STEP_FNS = {f.__name__: f for f in (respawn_on_reach,)}
SECTIONS = {"rewards": REWARDS, "terminations": DONES, "truncations": DONES, "step_fns": STEP_FNS}


def _bind(spec: Mapping[str, Any], registry: dict, objects: list[str]) -> Callable:
    kwargs = dict(spec)
    fn = registry[kwargs.pop("fn")]
    if "target" in kwargs:
        kwargs["target"] = objects.index(kwargs["target"])
    if "targets" in kwargs:
        kwargs["targets"] = tuple(objects.index(t) for t in kwargs["targets"])
    return lambda ctx: fn(ctx, **kwargs)


def build_task(task: Mapping[str, Any], objects: list[str]):
    """(reward_fn, terminated_fn, truncated_fn) of a StepContext, composed from the config lists."""
    parts = {name: [_bind(s, reg, objects) for s in (task.get(name) or {}).values()]
             for name, reg in SECTIONS.items() if name != "step_fns"}

    def any_of(fns):
        return lambda ctx: jnp.any(jnp.stack([jnp.asarray(f(ctx)) for f in fns])) if fns else jnp.bool_(False)

    def reward(ctx):
        return sum((f(ctx) for f in parts["rewards"]), jnp.float32(0.0))

    return reward, any_of(parts["terminations"]), any_of(parts["truncations"])


@dataclasses.dataclass(frozen=True)
class Task:
    """One task: its reward / termination / truncation functions, its step functions, and what an
    episode's success and failure are.

    Success: a termination, or (respawn tasks, which never end on reaching) an episode whose first
    reached object was the first respawn target. Failure: a truncation, or a first reach of any other
    respawn target."""

    reward: Callable[[StepContext], jax.Array]
    terminated: Callable[[StepContext], jax.Array]
    truncated: Callable[[StepContext], jax.Array]
    step_fns: tuple[Callable[[StepContext], Effects], ...]
    reach_targets: tuple[int, ...] = ()  # the first respawn_on_reach's targets
    reach_distance: float = 1.0

    def effects(self, ctx: StepContext) -> Effects:
        respawn = jnp.zeros(ctx.objects.shape[0], bool)
        for f in self.step_fns:
            respawn = respawn | f(ctx).respawn
        return Effects(respawn=respawn)

    def first_reach(self, ctx: StepContext) -> jax.Array:
        """1 + the index (in the respawn targets) of the first one within reach this step; 0: none."""
        if not self.reach_targets:
            return jnp.int32(0)
        hit = jnp.stack([ctx.distance(t) < self.reach_distance for t in self.reach_targets])
        return jnp.where(hit.any(), jnp.argmax(hit) + 1, 0).astype(jnp.int32)

    def outcome(self, ctx: StepContext, done: jax.Array, first: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(success, failure) of the step; `first` is the episode's first reach so far."""
        return ctx.terminated | (done & (first == 1)), ctx.truncated | (done & (first > 1))


def make_task(task: Mapping[str, Any], objects: list[str]) -> Task:
    """The Task of a config's task section (objects: the env's object names, in order)."""
    reward, terminated, truncated = build_task(task, objects)
    specs = list((task.get("step_fns") or {}).values())
    respawn = [s for s in specs if s["fn"] == "respawn_on_reach"]
    reach = ({"reach_targets": tuple(objects.index(t) for t in respawn[0]["targets"]),
              "reach_distance": float(respawn[0].get("distance", 1.0))} if respawn else {})
    return Task(reward, terminated, truncated, tuple(_bind(s, STEP_FNS, objects) for s in specs), **reach)


def validate_task(task: Mapping[str, Any], agents: Mapping[str, Any], key: str) -> None:
    """Unknown function, unknown keyword or unknown target: a ConfigError naming it."""
    from aci_jax.config import ConfigError

    objects = [n for n, a in agents.items() if a.get("kind") == "object"]
    for section, registry in SECTIONS.items():
        for name, spec in (task.get(section) or {}).items():
            where = f"{key}.{section}.{name}"
            fn = spec.get("fn")
            valid = sorted(registry)
            if fn not in valid:
                raise ConfigError(f"{where}.fn={fn!r}; valid: {list(valid)}")
            for t in ([spec["target"]] if "target" in spec else []) + list(spec.get("targets", [])):
                if t not in objects:
                    raise ConfigError(f"{where}: target '{t}' is not an object; valid: {objects}")
            params = set(inspect.signature(registry[fn]).parameters) - {"ctx"}
            extra = set(spec) - params - {"fn"}
            if extra:
                raise ConfigError(f"{where}: unknown argument(s) {sorted(extra)} for '{fn}'; "
                                  f"valid: {sorted(params)}")
