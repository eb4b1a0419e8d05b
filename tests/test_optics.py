"""The optics eye: the laws of its image formation, its noise, and its place in the env."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aci_jax
from aci_jax.eyes import optics as O
from aci_jax.eyes.geometry import camera_rays, eye_rays, pixel_mask
from aci_jax.eyes.render import cast_rays

CFG = O.OpticsConfig()
LAM = 530e-9
F = CFG.focal_length
D = CFG.pupil_diameter


def params(aperture, lens=1.0, mask=None, cfg=CFG):
    mask = np.ones((1, 1)) if mask is None else np.asarray(mask, np.float32)
    return O.OpticsParams(jnp.float32(aperture), jnp.float32(lens),
                          jnp.asarray(O.thin_lens_height(cfg), jnp.float32), jnp.asarray(mask))


_intensity = jax.jit(O.sensor_intensity, static_argnums=3)
_pupil = jax.jit(O.pupil_function, static_argnums=(1, 2))


def radial_profile(p, n, r_max, samples=401, lam=LAM, inv_depth=0.0):
    """Intensity along the image's x axis, r in [0, r_max]."""
    xi, field = _pupil(p, CFG, n, jnp.float32(lam), jnp.float32(inv_depth))
    x = jnp.linspace(0.0, r_max, samples)
    return np.asarray(x), np.asarray(_intensity(xi, field, jnp.float32(lam), F, x, jnp.zeros(1)))[0]


def pinhole_psf(d, n=128, samples=161):
    """(x (samples,), intensity (samples, samples)) of a pinhole of diameter d, on-axis point at
    infinity, over a window holding its geometric disc and diffraction rings."""
    xi, field = _pupil(params(d / D, lens=0.0), CFG, n, jnp.float32(LAM), jnp.float32(0.0))
    half = 1.5 * d + 8 * LAM * F / d
    x = jnp.linspace(-half, half, samples)
    return np.asarray(x), np.asarray(_intensity(xi, field, jnp.float32(LAM), F, x, x))


def r50(d):
    """Radius holding half the light of a pinhole of diameter d."""
    x, inten = pinhole_psf(d)
    xx, yy = np.meshgrid(x, x)
    r = np.hypot(xx, yy).ravel()
    order = np.argsort(r)
    cum = np.cumsum(inten.ravel()[order])
    return r[order][np.searchsorted(cum, 0.5 * cum[-1])]


def sharpness(d):
    """Peak of the PSF normalised to unit light (1/m²): how concentrated a point's image is."""
    x, inten = pinhole_psf(d)
    c = len(x) // 2
    return inten[c, c] / (inten.sum() * (x[1] - x[0]) ** 2)


_prepare = jax.jit(O.prepare, static_argnums=(1, 4))


def kernels(p, fov=(45.0, 10.0), res=(10, 10), s=2, cfg=CFG):
    out = _prepare(p, cfg, jnp.asarray(fov, jnp.float32), jnp.asarray(res), s)
    return np.asarray(out["psf"]), float(out["throughput"])


# -- the laws -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("aperture, lens, mask", [
    (1.0, 1.0, None), (0.2, 0.0, None), (0.02, 1.0, None), (0.001, 0.0, None), (0.6, 0.0, [[1, 0], [1, 1]]),
])
def test_psf_sums_to_one_per_channel(aperture, lens, mask):
    psf, _ = kernels(params(aperture, lens, mask))
    assert psf.shape == (len(CFG.depths), 3, CFG.kernel_size(2), CFG.kernel_size(2))
    assert psf.min() >= 0
    np.testing.assert_allclose(psf.sum((-1, -2)), 1.0, atol=1e-5)


def test_light_grows_with_aperture_area_and_none_without_one():
    apertures = [0.0, 0.1, 0.25, 0.5, 1.0]
    light = [kernels(params(a))[1] for a in apertures]
    np.testing.assert_allclose(light, np.square(apertures), rtol=1e-6)
    half = kernels(params(0.5, mask=[[1, 1], [0, 0]]))[1]  # the lower half of the pupil closed
    assert half == pytest.approx(0.125, rel=0.03)
    # In the image: a uniform scene comes out dimmed by the throughput, and black with no aperture.
    sub = jnp.full((1, 14 * 2, 14 * 2, 3), 0.6)
    for a in (0.0, 0.5, 1.0):
        opt = _prepare(params(a, lens=0.0), CFG, jnp.array([45.0, 10.0]), jnp.array([10, 10]), 2)
        img = np.asarray(O.form_image(sub, jnp.zeros(1), opt, CFG, 2))
        np.testing.assert_allclose(img, 0.6 * a * a, atol=1e-6)


@pytest.mark.parametrize("lam", CFG.wavelengths)
def test_lens_gives_the_airy_pattern(lam):
    """Focusing lens, circular aperture: first dark ring at 1.22 λ N (N = f / aperture diameter)."""
    step = 0.01
    rings = []
    for a in (1.0, 0.25):
        N = F / (a * D)
        x, inten = radial_profile(params(a), 128, 3.0 * lam * N, samples=301, lam=lam)
        first_min = x[np.argmax(np.diff(inten) > 0)]  # where the fall from the peak first turns
        assert first_min / (lam * N) == pytest.approx(1.22, abs=2 * step)
        assert inten[np.argmax(np.diff(inten) > 0)] < 1e-3 * inten[0]  # dark
        rings.append(first_min)
    assert rings[0] == pytest.approx(rings[1] / 4, rel=0.02)  # 4× the aperture: a 4× smaller disc


def test_larger_aperture_with_lens_is_brighter_and_sharper():
    """On a sensor whose cells resolve the Airy disc, a larger aperture puts more of the PSF in the
    centre cell and lets in more light."""
    fov, res = (10.0, 10.0), (100, 100)  # 8.7 µm cells (supersample 2); Airy radius 1.3 µm / aperture
    centre = CFG.kernel_size(2) // 2
    results = [kernels(params(a), fov, res) for a in (0.05, 0.1, 0.2, 0.4)]
    peak = [psf[0, 1, centre, centre] for psf, _ in results]  # the farthest depth, green
    light = [t for _, t in results]
    assert np.all(np.diff(peak) > 0) and np.all(np.diff(light) > 0)
    assert peak[0] < 0.3 and peak[-1] > 0.9


def test_pinhole_sharpest_near_rayleigh_and_blur_grows_past_it():
    """No lens: a point's image is most concentrated (highest peak per unit light) near Rayleigh's
    optimal pinhole d ≈ 1.9 √(λ f) (in theory at 0.91 of it: tan(πN/2) = πN, N = d²/(4 λ f)); the
    half-light radius shrinks with d while diffraction rules, grows with d past the optimum, and
    tends to the geometric shadow's d/(2√2) (a disc the size of the pinhole) once d ≫ √(λ f)."""
    d_opt = 1.9 * np.sqrt(LAM * F)
    ks = np.array([0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])
    best = ks[np.argmax([sharpness(k * d_opt) for k in ks])]
    assert 0.8 <= best <= 1.1, best
    ks = np.array([0.3, 0.45, 0.6, 1.0, 1.3, 1.6, 2.0, 2.5, 3.0])
    blur = np.array([r50(k * d_opt) for k in ks])
    assert np.all(np.diff(blur[ks <= 0.6]) < 0) and np.all(np.diff(blur[ks >= 1.0]) > 0), blur
    assert blur[-1] == pytest.approx(3.0 * d_opt / (2 * np.sqrt(2)), rel=0.05)


def test_pinhole_blur_on_the_pixels_is_the_aperture_disc():
    """Large pinholes (Fresnel numbers far beyond the pupil grid: λ raised) still blur to the
    geometric disc: per-axis RMS radius d/4 in the kernel, so blur ∝ aperture, and light ∝ its area."""
    cfg = O.OpticsConfig(psf_size=15)
    cell = 2 * F * np.tan(np.deg2rad(22.5)) / 10 / 2  # 45°, 10 pixels, supersample 2
    off = (np.arange(cfg.kernel_size(2)) - cfg.kernel_size(2) // 2) * cell
    for a in (0.4, 0.6, 0.8, 1.0):
        psf, light = kernels(params(a, 0.0, cfg=cfg), fov=(45.0, 45.0), cfg=cfg)
        k = psf[0, 1]  # 16 m away: footprint d (1 + f/z) ≈ d
        rms_x = np.sqrt((k.sum(0) * off ** 2).sum())
        rms_y = np.sqrt((k.sum(1) * off ** 2).sum())
        d = a * D
        assert rms_x == pytest.approx(d / 4, rel=0.06) and rms_y == pytest.approx(d / 4, rel=0.06)
        assert light == pytest.approx(a * a, rel=1e-6)


def test_point_renders_as_the_psf_upright_pinhole_inverts_the_pupil():
    """A point (one bright sub-sample) images as the kernel; for a pinhole whose left pupil half
    is open (as seen looking out), the blur falls to the right of the point: the pupil rotated by
    180°, as rays from a distant point cross the pinhole straight onto the sensor behind it."""
    cfg = O.OpticsConfig(psf_size=9)
    p = params(0.5, lens=0.0, mask=[[1, 0], [1, 0]], cfg=cfg)
    opt = _prepare(p, cfg, jnp.array([45.0, 45.0]), jnp.array([10, 10]), 1)
    m = cfg.margin
    sub = jnp.zeros((1, 10 + 2 * m, 10 + 2 * m, 3)).at[0, m + 5, m + 5].set(1.0)
    img = np.asarray(O.form_image(sub, jnp.zeros(1), opt, cfg, 1))[0]
    psf = np.asarray(opt["psf"][0]) * float(opt["throughput"])  # 1/depth 0: the farthest PSF
    for c in range(3):
        np.testing.assert_allclose(img[5 - m:5 + m + 1, 5 - m:5 + m + 1, c], psf[c], atol=1e-6)
    cols = img[..., 1].sum(0)
    assert cols[6:].sum() > 5 * cols[:5].sum()  # right of the point's column 5, not left


def test_noise_statistics_match_config():
    cfg = O.OpticsConfig(noise_std=0.05, psf_size=1)
    opt = {"psf": jnp.ones((len(cfg.depths), 3, 1, 1)), "throughput": jnp.float32(1.0)}
    sub = jnp.full((4, 64, 64, 3), 0.5)
    img = np.asarray(O.form_image(sub, jnp.zeros(4), opt, cfg, 1, jax.random.PRNGKey(0)))
    assert img.mean() == pytest.approx(0.5, abs=0.002)
    assert img.std() == pytest.approx(0.05, rel=0.03)
    again = np.asarray(O.form_image(sub, jnp.zeros(4), opt, cfg, 1, jax.random.PRNGKey(0)))
    other = np.asarray(O.form_image(sub, jnp.zeros(4), opt, cfg, 1, jax.random.PRNGKey(1)))
    assert np.array_equal(img, again) and not np.array_equal(img, other)
    assert np.array_equal(np.asarray(O.form_image(sub, jnp.zeros(4), opt, cfg, 1)), np.full(img.shape, 0.5))


def test_depth_weights_interpolate_in_inverse_depth():
    inv = np.asarray(CFG.inverse_depths)  # 1/16, 1/4, 1/2, 1, 2, 4
    w = np.asarray(O.depth_weights(CFG, jnp.array([0.0, inv[2], (inv[2] + inv[3]) / 2, 100.0])))
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert w[0, 0] == 1 and w[1, 2] == 1 and w[3, -1] == 1
    np.testing.assert_allclose(w[2, 2:4], [0.5, 0.5], atol=1e-6)


# -- in the env -----------------------------------------------------------------------------------------

def _old_render(env, data, eyes, wall_material):
    """render_eyes as it was before the optics eye (with texture filtering by footprint)."""
    b = env.buffer
    pos = data.qpos[env.agent.qpos_adr]
    origins, dirs, dx, dy, axes = eye_rays(eyes, b, jnp.array([pos[0], pos[1], env.agent.radius]), pos[2],
                                           env.agent.radius, differentials=True)
    per_ray = lambda x: jnp.broadcast_to(x[:, None, None, None], dirs.shape).reshape(-1, 3)
    rgb, depth, geom = cast_rays(env.scene, env.geom_xpos(data), data.geom_xmat, per_ray(origins),
                                 dirs.reshape(-1, 3), exclude_geom=env.agent.geom,
                                 wall_material=env._wall_material(wall_material),
                                 ray_dx=per_ray(dx), ray_dy=per_ray(dy), view_axis=per_ray(axes))
    shape = dirs.shape[:-1]
    return rgb.reshape(*shape, 3).mean(-2) * pixel_mask(eyes, b)[..., None]


def test_optics_off_images_equal_todays():
    env = aci_jax.make_env(aci_jax.load_config("detection", ["env.frame_stack=2"]))
    assert env.optics is None and env.default_eyes.optics is None
    assert len(jax.tree.leaves(env.default_eyes)) == 5  # checkpoints of plain eyes keep their layout
    s = jax.jit(env.reset)(jax.random.PRNGKey(3))
    assert "optics" not in s.info
    old = jax.jit(_old_render, static_argnums=0)(env, s.pipeline_state, s.info["eyes"], s.info["episode"].wall_material)
    # Two separately compiled programs: XLA may fuse (and so round) them differently, by float32 ulps
    # (1e-7 of a colour in [0, 1]); anything the optics could change moves a pixel by far more.
    np.testing.assert_allclose(np.asarray(s.obs["eye_0_0"][-1]), np.asarray(old[0]), rtol=0, atol=1e-6)
    frame = jnp.eye(3)
    np.testing.assert_array_equal(camera_rays(frame, jnp.array([45.0, 10.0]), jnp.array([4, 4]), 6, 2),
                                  camera_rays(frame, jnp.array([45.0, 10.0]), jnp.array([4, 4]), 6, 2, 0))
    # With a margin, the inner pixels cast the same rays.
    wide = camera_rays(frame, jnp.array([45.0, 10.0]), jnp.array([4, 4]), 6, 2, 3)
    np.testing.assert_allclose(wide[3:9, 3:9], camera_rays(frame, jnp.array([45.0, 10.0]), jnp.array([4, 4]), 6, 2),
                               atol=1e-7)


@pytest.fixture(scope="module")
def optics_env():
    """The detection_optics env and its jitted reset and step (shared: compiling is most of the time)."""
    cfg = aci_jax.load_config("detection_optics", ["env.frame_stack=2", "env.max_episode_steps=5"])
    env = aci_jax.make_env(cfg)
    return env, jax.jit(env.reset), jax.jit(env.step)


def _individual(env, aperture, lens):
    e = env.default_eyes
    return e.replace(optics=e.optics.replace(aperture=jnp.float32(aperture), lens=jnp.float32(lens)))


def test_vmap_over_individuals_with_different_apertures_equals_each_alone(optics_env):
    env, reset, step = optics_env
    assert env.default_eyes.optics.aperture == pytest.approx(0.2) and float(env.default_eyes.optics.lens) == 0.0
    pop = [_individual(env, 0.2, 0.0), _individual(env, 0.7, 1.0)]
    eyes = jax.tree.map(lambda *x: jnp.stack(x), *pop)
    keys = jnp.stack([jax.random.PRNGKey(0)] * 2)  # the same scene for both
    actions = jnp.array([[1.0, 0.2], [1.0, 0.2]])
    batch = jax.jit(jax.vmap(lambda k, e, a: env.step(env.reset(k, e), a)))(keys, eyes, actions)
    for i in range(2):
        s = step(reset(keys[i], pop[i]), actions[i])
        np.testing.assert_allclose(batch.obs["eye_0_0"][i], s.obs["eye_0_0"], atol=1e-5)
        np.testing.assert_allclose(batch.info["optics"]["psf"][i], s.info["optics"]["psf"], atol=1e-5)
    np.testing.assert_allclose(batch.info["optics"]["throughput"], [0.04, 0.49], rtol=1e-5)
    img = np.asarray(batch.obs["eye_0_0"][:, -1])
    assert img[1].mean() > 6 * img[0].mean()  # 12× the light


def test_env_noise_is_fresh_each_step_and_reproducible(optics_env):
    env, reset, step = optics_env
    eyes = _individual(env, 1.0, 1.0)
    s0 = reset(jax.random.PRNGKey(1), eyes)
    still = jnp.array([-1.0, 0.0])  # stand still: the scene does not change, the noise does
    s1 = step(s0, still)
    s2 = step(s1, still)
    frames = [np.asarray(s.obs["eye_0_0"][-1]) for s in (s0, s1, s2)]
    diff = frames[2] - frames[1]
    assert 0.5 * env.optics.noise_std < diff.std() / np.sqrt(2) < 1.5 * env.optics.noise_std
    assert not np.array_equal(frames[0], frames[1])
    np.testing.assert_array_equal(np.asarray(step(s1, still).obs["eye_0_0"]), np.asarray(s2.obs["eye_0_0"]))


def test_pinhole_blurs_the_goal_stripes(optics_env):
    """Facing the goal 2 m away, a pinhole of aperture 0.2 (blur ≈ 1.2 pixels across) keeps much less
    of the stripes' contrast across columns than a lens of the same aperture or a 4× smaller pinhole
    (per unit light)."""
    env, reset, _ = optics_env
    s = reset(jax.random.PRNGKey(0), env.default_eyes)
    data = s.pipeline_state
    qpos = data.qpos.at[:3].set(jnp.array([0.0, 0.0, np.pi / 2]))
    mocap = data.mocap_pos.at[env.world.objects["goal"].mocap].set(jnp.array([0.0, 2.0, 0.5]))
    mocap = mocap.at[env.world.objects["adversary"].mocap].set(jnp.array([50.0, 50.0, -10.0]))
    data = jax.jit(lambda d: __import__("mujoco").mjx.kinematics(env.mx, d))(data.replace(qpos=qpos, mocap_pos=mocap))
    render = jax.jit(env.render_eyes)  # no key: no noise
    contrast = {}
    for name, aperture, lens in (("pinhole", 0.2, 0.0), ("lens", 0.2, 1.0), ("small pinhole", 0.05, 0.0)):
        img = np.asarray(render(data, _individual(env, aperture, lens), s.info["episode"].wall_material)[0][0])
        red = (img[..., 0] - img[..., 2]) / aperture ** 2
        contrast[name] = np.abs(np.diff(red, axis=1)).mean()
    assert contrast["pinhole"] < 0.7 * contrast["lens"] and contrast["pinhole"] < 0.7 * contrast["small pinhole"]


def test_rollout_aperture_views_move_together_and_differ_in_light(optics_env):
    """`rollout.apertures`: one episode per aperture, the same motion as the rollout's video env
    (same reset key and action keys), images dimmer through smaller apertures."""
    from aci_jax.rollout import _ApertureViews, random_policy

    env, reset, step = optics_env
    policy = random_policy(env)
    key = jax.random.PRNGKey(3)
    with pytest.warns(UserWarning, match="aperture 1 .*psf_size"):  # the pinhole of 1 blurs past psf_size 7
        views = _ApertureViews(env, policy, key, [0.1, 1.0])
    assert views.apertures == [0.1, 1.0]
    alone = reset(key)
    for t in range(3):
        k = jax.random.PRNGKey(10 + t)
        alone = step(alone, policy(alone, k))
        views.step(k)
    qpos = np.asarray(views.states.pipeline_state.qpos)
    np.testing.assert_allclose(qpos[0], qpos[1], atol=1e-6)
    np.testing.assert_allclose(qpos[0], np.asarray(alone.pipeline_state.qpos), atol=1e-5)
    img = np.asarray(views.images())
    assert img.shape[0] == 2 and img[1].mean() > 10 * max(img[0].mean(), 1e-4)


def test_a_blur_wider_than_psf_size_warns_with_the_size_that_holds_it():
    """A pinhole of aperture 1 blurs ~6 × 30 pixels of the detection eye: psf_size 7 cuts it, and
    building the env says so, naming the key and the size that holds it; the exp's 0.2 fits."""
    from aci_jax.eyes.optics import blur_pixels, psf_window_warning

    cfg = aci_jax.load_config("detection_optics", ["env.agents.agent.eyes.optics.aperture=1.0"])
    with pytest.warns(UserWarning, match=r"psf_size is 7.*env\.agents\.agent\.eyes\.optics\.psf_size=31"):
        env = aci_jax.make_env(cfg)
    e = env.default_eyes
    px = blur_pixels(e.optics, env.optics, e.fov, e.resolution)
    assert 5.5 < px[0] < 7 and 28 < px[1] < 31  # ≈ the 5 mm hole over 4.5° columns and 1° rows
    assert psf_window_warning(_individual(env, 0.2, 0.0).optics, env.optics, e.fov, e.resolution) is None
    assert psf_window_warning(_individual(env, 1.0, 1.0).optics, env.optics, e.fov, e.resolution) is None  # a lens: sharp
