"""What the optics eye sees at several apertures, with and without a lens, side by side.

Writes `benchmarks/figures/optics_apertures.png`: the agent faces the goal (left half of each panel)
or the adversary (right half) 2.5 m away; columns: apertures; rows: pinhole (no lens), then lens,
each twice: first the blur alone (no noise, brightened by 1/a² to undo the aperture's dimming),
then as the agent gets it (a² of the full pupil's light, plus `exp=detection_optics`'s sensor
noise, std 0.01). Eye pixels are drawn square (the detection eye's are 4.5° wide and 1° tall).

    python benchmarks/optics_views.py env.agents.agent.eyes.optics.psf_size=31 [more exp overrides]

(`psf_size=31` holds the blur of the pinhole of aperture 1, 6 × 30 pixels of this eye; with the exp's 7
the pinholes of 0.5 and 1 are cut to 7 pixels and come out far too sharp: building the env warns.)
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

APERTURES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
DISTANCE = 2.5
PIXEL = 12  # screen pixels per eye pixel


def scene(env, state, obj: str, other: str):
    """The agent at the origin facing +y, `obj` DISTANCE ahead, `other` parked out of sight."""
    data = state.pipeline_state
    qpos = data.qpos.at[env.agent.qpos_adr].set(jnp.array([0.0, -DISTANCE, np.pi / 2]))
    mocap = data.mocap_pos.at[env.world.objects[obj].mocap].set(jnp.array([0.0, 0.0, env.world.objects[obj].radius]))
    mocap = mocap.at[env.world.objects[other].mocap].set(jnp.array([50.0, 50.0, -10.0]))
    return jax.jit(lambda d: mjx.kinematics(env.mx, d))(data.replace(qpos=qpos, mocap_pos=mocap))


def panel(img: np.ndarray) -> np.ndarray:
    big = np.repeat(np.repeat(img, PIXEL, 0), PIXEL, 1)
    return np.pad(big, ((2, 2), (2, 2), (0, 0)), constant_values=1.0)


def views(overrides: list[str]) -> np.ndarray:
    cfg = aci_jax.load_config("detection_optics", overrides)
    env = aci_jax.make_env(cfg)
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    render = jax.jit(env.render_eyes)
    datas = [scene(env, state, "goal", "adversary"), scene(env, state, "adversary", "goal")]
    rows = []
    for lens in (0.0, 1.0):
        for seen in (False, True):
            row = []
            for a in APERTURES:
                eyes = env.default_eyes
                eyes = eyes.replace(optics=eyes.optics.replace(aperture=jnp.float32(a), lens=jnp.float32(lens)))
                key = jax.random.PRNGKey(int(a * 1000)) if seen else None
                pair = [np.asarray(render(d, eyes, state.info["episode"].wall_material, None, key)[0][0]) for d in datas]
                if not seen:
                    pair = [np.clip(p / (a * a), 0.0, 1.0) for p in pair]
                row.append(np.concatenate([panel(p) for p in pair], 1))
                row.append(np.ones((row[-1].shape[0], 8, 3)))
            rows.append(np.concatenate(row, 1))
            rows.append(np.ones((6, rows[-1].shape[1], 3)))
    return np.concatenate(rows, 0)


if __name__ == "__main__":
    out = Path(__file__).parent / "figures" / "optics_apertures.png"
    out.parent.mkdir(exist_ok=True)
    picture = views(sys.argv[1:])
    try:  # column labels, if matplotlib is there
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        h, w = picture.shape[:2]
        fig = plt.figure(figsize=(w / 100, h / 100 + 0.9), dpi=100)
        ax = fig.add_axes([0, 0, 1, h / (h + 90)])
        ax.imshow(picture)
        ax.set_axis_off()
        col = w / len(APERTURES)
        for i, a in enumerate(APERTURES):
            fig.text((i + 0.5) * col / w, 1 - 25 / (h + 90), f"aperture {a}", ha="center", fontsize=10)
        fig.text(0.5, 1 - 60 / (h + 90), "rows: pinhole blur (x 1/a²), pinhole as seen (dim, noisy), lens blur"
                 " (x 1/a²), lens as seen; each panel: goal | adversary at 2.5 m", ha="center", fontsize=9)
        fig.savefig(out)
    except ImportError:
        imageio.imwrite(out, to_uint8(picture))
    print(f"wrote {out}")
