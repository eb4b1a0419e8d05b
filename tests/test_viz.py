"""Videos are written without forking the (multithreaded) JAX process: ffmpeg is spawned."""

import os

import numpy as np

from aci_jax.viz import write_video

FORKS = []
os.register_at_fork(before=lambda: FORKS.append(os.getpid()))  # Python's fork hooks: os.fork and fork_exec


def test_write_video_spawns_ffmpeg_without_a_fork(tmp_path):
    import imageio.v3 as iio
    import jax

    jax.numpy.zeros(3).block_until_ready()  # JAX's threads are running, as in a command
    frames = [np.full((33, 48, 3), i / 10, np.float32) for i in range(8)]  # images in [0, 1]
    FORKS.clear()
    path = write_video(frames, tmp_path / "v", fps=5)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    assert FORKS == []  # posix_spawn, not fork
    back = iio.imread(path, index=None)
    assert back.shape == (8, 32, 48, 3)  # even sizes for yuv420p: 33 rows cropped to 32
    np.testing.assert_allclose(back[:, 4:-4, 4:-4].mean(axis=(1, 2, 3)), [i / 10 * 255 for i in range(8)], atol=3)
