"""Eye placement, ray directions and padding masks."""

import jax.numpy as jnp
import numpy as np

from aci_jax.eyes.geometry import EyeBuffer, EyeParams, camera_rays, eye_placements, eye_rays, pixel_mask


def params(num=(1, 1), res=(4, 4), fov=(45.0, 45.0), lat=(0.0, 0.0), lon=(0.0, 0.0)):
    return EyeParams(jnp.array(num), jnp.array(res), jnp.array(fov, jnp.float32),
                     jnp.array(lat, jnp.float32), jnp.array(lon, jnp.float32))


def test_single_eye_at_middle_of_range_and_grid_spacing():
    lat, lon, ok = eye_placements(params(lon=(-90.0, 90.0)), EyeBuffer(1, 4, 1))
    np.testing.assert_allclose(np.rad2deg(lon), [0.0], atol=1e-5)
    lat, lon, ok = eye_placements(params(num=(1, 3), lon=(-90.0, 90.0)), EyeBuffer(4, 4, 1))
    np.testing.assert_allclose(np.rad2deg(lon[:3]), [-90.0, 0.0, 90.0], atol=1e-4)  # ends included (ACI)
    assert ok.tolist() == [True, True, True, False]
    _, lon, _ = eye_placements(params(num=(1, 8), lon=(-90.0, 90.0)), EyeBuffer(8, 4, 1))
    np.testing.assert_allclose(np.rad2deg(lon)[[3, 4, 7]], [-90 / 7, 90 / 7, 90.0], atol=1e-4)
    _, lon, _ = eye_placements(params(num=(1, 4), lon=(-180.0, 180.0)), EyeBuffer(4, 4, 1))
    np.testing.assert_allclose(np.rad2deg(lon), [-180.0, -90.0, 0.0, 90.0], atol=1e-4)  # no two at ±180


def test_eye_at_lon_90_looks_left_of_agent():
    o, d = eye_rays(params(res=(1, 1), lon=(90.0, 90.0)), EyeBuffer(1, 1, 1), jnp.zeros(3), jnp.float32(0.0), 0.2)
    np.testing.assert_allclose(o[0], [0.0, 0.2, 0.0], atol=1e-6)  # on the sphere's left side
    np.testing.assert_allclose(d[0, 0, 0, 0], [0.0, 1.0, 0.0], atol=1e-6)
    # Turning the agent by 90° turns the eye with it: it now looks along -x.
    o, d = eye_rays(params(res=(1, 1), lon=(90.0, 90.0)), EyeBuffer(1, 1, 1), jnp.zeros(3), jnp.float32(np.pi / 2), 0.2)
    np.testing.assert_allclose(d[0, 0, 0, 0], [-1.0, 0.0, 0.0], atol=1e-6)


def test_image_orientation_columns_right_rows_down():
    frame = jnp.eye(3)  # forward x, left y, up z
    d = camera_rays(frame, jnp.array([90.0, 90.0]), jnp.array([3, 3]), 3, 1)[..., 0, :]
    assert d[1, 0, 1] > 0 > d[1, 2, 1]  # left column looks left (+y)
    assert d[0, 1, 2] > 0 > d[2, 1, 2]  # top row looks up (+z)
    np.testing.assert_allclose(d[1, 1], [1.0, 0.0, 0.0], atol=1e-6)


def test_padded_pixel_has_same_rays_as_unpadded():
    frame = jnp.eye(3)
    small = camera_rays(frame, jnp.array([45.0, 30.0]), jnp.array([1, 1]), 1, 3)
    big = camera_rays(frame, jnp.array([45.0, 30.0]), jnp.array([1, 1]), 8, 3)
    np.testing.assert_allclose(big[0, 0], small[0, 0], atol=1e-7)


def test_supersampling_spans_the_pixel_patch():
    d = camera_rays(jnp.eye(3), jnp.array([90.0, 90.0]), jnp.array([1, 1]), 1, 2)[0, 0]
    # 2x2 sub-rays at ±0.25 of the 90° patch: tan = ±0.5
    np.testing.assert_allclose(np.abs(d[:, 1] / d[:, 0]), 0.5, atol=1e-6)


def test_pixel_mask():
    m = pixel_mask(params(num=(1, 2), res=(3, 2)), EyeBuffer(4, 5, 1))
    assert m.shape == (4, 5, 5)
    assert m[0].sum() == 6 and m[1].sum() == 6 and m[2:].sum() == 0
    assert m[0, :2, :3].all()


def test_ray_differentials_step_to_the_next_sub_ray():
    """The footprint steps: a ray d's direction changes by (d·axis)·step to the next sub-ray along
    columns / rows (up to a part along d), from fov, resolution and supersample: central
    differences agree."""
    frame = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0])
    axis = np.asarray(frame[:, 0])
    change = lambda step, d: (d @ axis)[..., None] * (step - d * (d @ step)[..., None])
    d, sx, sy = camera_rays(frame, jnp.array([40.0, 20.0]), jnp.array([8, 4]), 8, 1, differentials=True)
    d, sx, sy = np.asarray(d)[..., 0, :], np.asarray(sx), np.asarray(sy)
    np.testing.assert_allclose((d[:4, 2:] - d[:4, :-2]) / 2, change(sx, d)[:4, 1:-1], atol=1e-3)
    np.testing.assert_allclose((d[2:4] - d[:2]) / 2, change(sy, d)[1:3], atol=1e-3)
    d, sx, sy = camera_rays(frame, jnp.array([6.0, 3.0]), jnp.array([1, 1]), 1, 3, differentials=True)
    d, sx, sy = np.asarray(d)[0, 0].reshape(3, 3, 3), np.asarray(sx), np.asarray(sy)
    np.testing.assert_allclose((d[1, 2] - d[1, 0]) / 2, change(sx, d)[1, 1], rtol=1e-3, atol=1e-6)  # sub-rays
    np.testing.assert_allclose((d[2, 1] - d[0, 1]) / 2, change(sy, d)[1, 1], rtol=1e-3, atol=1e-6)
