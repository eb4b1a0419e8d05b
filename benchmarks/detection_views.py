"""What the detection eye sees of the goal and the adversary, by distance and viewing direction.

Writes `benchmarks/figures/detection_views.png`: rows goal / adversary; columns the agent at 1.5,
2.5, 4 and 6 m from the object, first looking along +y (the adversary side-on: horizontal stripes),
then along +x (along the adversary's pole axis: a star of stripes much like the goal's).

    python benchmarks/detection_views.py [exp overrides, e.g. env.agents.agent.eyes.resolution=[15,15]]
"""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
from mujoco import mjx

import aci_jax
from aci_jax.viz import to_uint8

DISTANCES = (1.5, 2.5, 4.0, 6.0)
AZIMUTHS = (90.0, 0.0)  # viewing direction of the agent, degrees from +x
PIXEL = 12  # screen pixels per eye pixel


def views(overrides: list[str]) -> np.ndarray:
    """(2 objects, len(AZIMUTHS) * len(DISTANCES) views) eye images tiled into one picture."""
    env = aci_jax.make_env(aci_jax.load_config("detection", overrides))
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    kinematics = jax.jit(lambda d: mjx.kinematics(env.mx, d))
    render = jax.jit(env.render_eyes)
    rows = []
    for obj, other in (("goal", "adversary"), ("adversary", "goal")):
        row = []
        for az in np.deg2rad(AZIMUTHS):
            for d in DISTANCES:
                data = state.pipeline_state
                qpos = data.qpos.at[env.agent.qpos_adr].set(jnp.array([-d * np.cos(az), -d * np.sin(az), az]))
                mocap = data.mocap_pos.at[env.world.objects[obj].mocap].set(
                    jnp.array([0.0, 0.0, env.world.objects[obj].radius]))
                mocap = mocap.at[env.world.objects[other].mocap].set(jnp.array([50.0, 50.0, -10.0]))
                img, _, _ = render(kinematics(data.replace(qpos=qpos, mocap_pos=mocap)),
                                   env.default_eyes, state.info["episode"].wall_material)
                big = np.repeat(np.repeat(np.asarray(img[0]), PIXEL, 0), PIXEL, 1)
                row.append(np.pad(big, ((2, 2), (2, 2), (0, 0)), constant_values=1.0))
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


if __name__ == "__main__":
    out = Path(__file__).parent / "figures" / "detection_views.png"
    out.parent.mkdir(exist_ok=True)
    imageio.imwrite(out, to_uint8(views(sys.argv[1:])))
    print(f"wrote {out}")
