"""Each reward / termination / truncation function on constructed step contexts."""

import jax.numpy as jnp
import pytest

from aci_jax.envs import tasks as T


def ctx(pos=(0.0, 0.0), prev_pos=(0.0, 0.0), start=(0.0, 0.0), objects=((3.0, 0.0), (-3.0, 0.0)),
        prev_objects=None, contact=False, step=10, ret=0.0, terminated=False, truncated=False):
    objects = jnp.asarray(objects, jnp.float32)
    return T.StepContext(pos=jnp.asarray(pos, jnp.float32), prev_pos=jnp.asarray(prev_pos, jnp.float32),
                         start_pos=jnp.asarray(start, jnp.float32), objects=objects,
                         prev_objects=objects if prev_objects is None else jnp.asarray(prev_objects),
                         contact=jnp.bool_(contact), step=jnp.int32(step), max_steps=128,
                         ret=jnp.float32(ret), terminated=jnp.bool_(terminated),
                         truncated=jnp.bool_(truncated))


def test_reach_with_and_without_quickness():
    near = ctx(pos=(2.5, 0.0), step=32)
    assert float(T.reach(near, target=0, distance=1.0, reward=1.0)) == 1.0
    assert float(T.reach(near, target=0, reward=10.0, quickness=True)) == pytest.approx(10 * (1 - 32 / 128))
    assert float(T.reach(ctx(pos=(1.0, 0.0)), target=0, distance=1.0)) == 0.0
    assert float(T.reach(near, target=1, distance=1.0)) == 0.0


def test_distance_decrease_and_from_start():
    c = ctx(pos=(1.0, 0.0), prev_pos=(0.0, 0.0))
    assert float(T.distance_decrease(c, target=0, factor=0.25)) == pytest.approx(0.25)
    assert float(T.distance_decrease(c, target=1, factor=0.25)) == pytest.approx(-0.25)
    c = ctx(pos=(0.0, 3.0), prev_pos=(0.0, 1.0), start=(0.0, 0.0))
    assert float(T.distance_from_start(c)) == pytest.approx(2.0)


def test_contact_truncation_termination_per_step():
    assert float(T.contact(ctx(contact=True), penalty=-2.0)) == -2.0
    assert float(T.contact(ctx(contact=False))) == 0.0
    assert float(T.on_truncation(ctx(truncated=True))) == -1.0
    assert float(T.on_truncation(ctx(truncated=False))) == 0.0
    assert float(T.on_termination(ctx(terminated=True), reward=3.0)) == 3.0
    assert float(T.per_step(ctx(), reward=-0.1)) == pytest.approx(-0.1)


def test_dones():
    assert bool(T.reached(ctx(pos=(2.2, 0.0)), target=0, distance=1.0))
    assert not bool(T.reached(ctx(pos=(1.5, 0.0)), target=0, distance=1.0))
    assert bool(T.low_return(ctx(ret=-51.0), threshold=-50.0))
    assert not bool(T.low_return(ctx(ret=-49.0), threshold=-50.0))


def test_build_task_composes_sum_and_any():
    task = {"rewards": {"goal": {"fn": "reach", "target": "goal", "reward": 1.0},
                        "contact": {"fn": "contact", "penalty": -1.0},
                        "fail": {"fn": "on_truncation", "penalty": -1.0}},
            "terminations": {"goal": {"fn": "reached", "target": "goal"}},
            "truncations": {"adv": {"fn": "reached", "target": "adversary"},
                            "low": {"fn": "low_return", "threshold": -50.0}}}
    reward, terminated, truncated = T.build_task(task, ["goal", "adversary"])
    c = ctx(pos=(-2.5, 0.0), contact=True)
    c = c.replace(terminated=terminated(c), truncated=truncated(c))
    assert not bool(c.terminated) and bool(c.truncated)
    assert float(reward(c)) == pytest.approx(-2.0)
    c = ctx(pos=(2.5, 0.0))
    c = c.replace(terminated=terminated(c), truncated=truncated(c))
    assert bool(c.terminated) and float(reward(c)) == pytest.approx(1.0)
    _, none_term, _ = T.build_task({}, ["goal"])
    assert not bool(none_term(c))
