"""Pictures people look at: bird's-eye and third-person views (same ray caster), eye mosaics, videos."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np

from aci_jax.eyes.geometry import lookat_rays
from aci_jax.eyes.render import cast_rays

BIRDSEYE_HEIGHT = 100.0


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure, write it to `path` (its folder created) and close it."""
    import matplotlib.pyplot as plt

    from aci_jax.runs import naming_errors

    try:
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        with naming_errors(path):  # a full disk fails at the flush, with no file named
            fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def birdseye(env, data, wall_material, maze: jax.Array, size: int) -> jax.Array:
    """Top-down orthographic view (size, size, 3) of the env's current maze, with object markers."""
    g = env.grids
    half = jnp.max(g.shape[maze] * g.scale[maze]) / 2 + g.scale[maze] / 2
    t = (jnp.arange(size) + 0.5) / size * 2 - 1
    x = g.offset[maze, 0] + half * t[None, :]
    y = g.offset[maze, 1] - half * t[:, None]
    origins = jnp.stack([jnp.broadcast_to(x, (size, size)), jnp.broadcast_to(y, (size, size)),
                         jnp.full((size, size), BIRDSEYE_HEIGHT)], -1).reshape(-1, 3)
    dirs = jnp.broadcast_to(jnp.array([0.0, 0.0, -1.0]), origins.shape)
    rgb, _, _ = cast_rays(env.scene, env.geom_xpos(data), data.geom_xmat, origins, dirs,
                          wall_material=env._wall_material(wall_material))
    img = rgb.reshape(size, size, 3)
    # The agent is almost invisible from above: draw it, with a heading tick, as overlay pixels.
    pos = data.qpos[env.agent.qpos_adr]

    def px(p):  # world xy -> (col, row) pixel coordinates
        return ((p[0] - g.offset[maze, 0]) / half + 1) / 2 * size, ((g.offset[maze, 1] - p[1]) / half + 1) / 2 * size

    cols, rows = jnp.meshgrid(jnp.arange(size), jnp.arange(size))
    ax, ay = px(pos[:2])
    r = max(size / 100, 1.5)
    img = jnp.where((((cols - ax) ** 2 + (rows - ay) ** 2) < (2 * r) ** 2)[..., None], jnp.array([1.0, 1.0, 0.0]), img)
    for s in jnp.linspace(0, 1, 8):
        hx, hy = px(pos[:2] + s * jnp.array([jnp.cos(pos[2]), jnp.sin(pos[2])]))
        img = jnp.where((((cols - hx) ** 2 + (rows - hy) ** 2) < r ** 2)[..., None], jnp.array([1.0, 0.5, 0.0]), img)
    return img


def third_person(env, data, wall_material, size: int, distance: float = 3.0, height: float = 2.0) -> jax.Array:
    """Perspective view from behind and above the agent, looking at it."""
    pos = data.qpos[env.agent.qpos_adr]
    heading = jnp.array([jnp.cos(pos[2]), jnp.sin(pos[2]), 0.0])
    target = jnp.array([pos[0], pos[1], env.agent.radius]) + 2.0 * heading
    eye = jnp.array([pos[0], pos[1], height]) - distance * heading
    dirs, step_x, step_y, axis = lookat_rays(eye, target, 60.0, size, differentials=True)
    dirs = dirs.reshape(-1, 3)
    per_ray = lambda x: jnp.broadcast_to(x, dirs.shape)
    rgb, _, _ = cast_rays(env.scene, env.geom_xpos(data), data.geom_xmat, per_ray(eye), dirs,
                          wall_material=env._wall_material(wall_material), ray_dx=per_ray(step_x),
                          ray_dy=per_ray(step_y), view_axis=per_ray(axis))
    return rgb.reshape(size, size, 3)


def eye_mosaic(images: np.ndarray, num_eyes, resolution, cell: int = 64, pad: int = 2) -> np.ndarray:
    """Tile an agent's eye images (E, R, R, 3) into an n_lat × n_lon grid, each scaled up to `cell`."""
    n_lat, n_lon = int(num_eyes[0]), int(num_eyes[1])
    w, h = int(resolution[0]), int(resolution[1])
    out = np.ones((n_lat * (cell + pad) + pad, n_lon * (cell + pad) + pad, 3), np.float32) * 0.3
    for a in range(n_lat):
        for b in range(n_lon):
            img = np.asarray(images[a * n_lon + b])[:h, :w]
            up = np.repeat(np.repeat(img, -(-cell // h), 0), -(-cell // w), 1)[:cell, :cell]
            y0, x0 = pad + a * (cell + pad), pad + b * (cell + pad)
            out[y0:y0 + cell, x0:x0 + cell] = up
    # Latitude grows upwards, so the top row of the mosaic shows the highest eyes.
    return out[::-1] if n_lat > 1 else out


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate images horizontally, vertically centred on a dark background."""
    h = max(i.shape[0] for i in images)
    padded = []
    for i in images:
        top = (h - i.shape[0]) // 2
        canvas = np.full((h, i.shape[1], 3), 0.15, np.float32)
        canvas[top:top + i.shape[0]] = i
        padded.append(canvas)
    return np.concatenate(padded, 1)


def captioned(img: np.ndarray, text: str, height: int = 16) -> np.ndarray:
    """`img` (H, W, 3) floats in [0, 1] with a dark strip above it holding `text` (PIL's default font)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (img.shape[1], height), (38, 38, 38))
    ImageDraw.Draw(strip).text((4, 2), text, fill=(230, 230, 230))
    return np.concatenate([np.asarray(strip, np.float32) / 255.0, np.asarray(img, np.float32)], 0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8)


def write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> Path:
    """mp4 when ffmpeg is available (imageio-ffmpeg's binary), else gif; returns the path written.

    ffmpeg is started with posix_spawn, not fork (`_spawn_ffmpeg`): JAX runs threads, and a fork of a
    multithreaded process can deadlock (Python warns about it at every fork)."""
    frames = [to_uint8(f) for f in frames]
    # Even sizes for yuv420p encoders.
    frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
    path = Path(path)
    try:
        _spawn_ffmpeg(frames, path.with_suffix(".mp4"), fps)
        return path.with_suffix(".mp4")
    except (ImportError, OSError, RuntimeError):  # no ffmpeg
        imageio.mimsave(path.with_suffix(".gif"), frames, duration=1 / fps)
        return path.with_suffix(".gif")


def _spawn_ffmpeg(frames: list[np.ndarray], out: Path, fps: int) -> None:
    """Encode RGB uint8 frames to H.264 mp4 with imageio-ffmpeg's ffmpeg, fed through a pipe. The
    arguments meet subprocess's conditions for posix_spawn (an absolute executable, close_fds=False,
    no cwd or preexec_fn, pipes above fd 2), so the child is spawned, never forked."""
    import subprocess

    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
           "-crf", "20", str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            close_fds=False)
    _, err = proc.communicate(b"".join(np.ascontiguousarray(f[..., :3]).tobytes() for f in frames))
    if proc.returncode:
        raise RuntimeError(f"ffmpeg failed writing {out}: {err.decode(errors='replace')[-300:]}")
