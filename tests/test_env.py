"""The batched env: spawning, determinism, vmap equivalence, auto-reset, eyes that see the scene."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aci_jax

N = 4


@pytest.fixture(scope="module")
def det():
    cfg = aci_jax.load_config("detection", ["env.max_episode_steps=6", "env.frame_stack=3"])
    env = aci_jax.make_env(cfg)
    return env, jax.jit(env.reset), jax.jit(env.step), jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))


def rollout(vstep, states, n_steps, seed=1):
    keys = jax.random.split(jax.random.PRNGKey(seed), n_steps)
    out = []
    for k in keys:
        a = jax.random.uniform(k, (states.reward.shape[0], 2), minval=-1, maxval=1)
        states = vstep(states, a)
        out.append(states)
    return out


def test_observation_shapes_and_ranges(det):
    env, reset, _, vreset, _ = det
    s = vreset(jax.random.split(jax.random.PRNGKey(0), N))
    assert env.action_size == 2
    assert set(s.obs) == {"eye_0_0", "action", "contact"}
    for k, shape in env.observation_size.items():
        assert s.obs[k].shape == (N, *shape)
    eye = np.asarray(s.obs["eye_0_0"])
    assert eye.shape == (N, 3, 10, 10, 3) and 0 <= eye.min() and eye.max() <= 1
    assert (eye[:, :-1] == 0).all() and eye[:, -1].max() > 0  # zero-padded stack at episode start


def test_spawn_on_group_cells_without_overlap(det):
    env, _, _, vreset, _ = det
    s = vreset(jax.random.split(jax.random.PRNGKey(3), 64))
    maze = env.world.mazes[0]
    agent = np.asarray(s.pipeline_state.qpos[:, :2])
    objects = np.asarray(jax.vmap(env.object_xy)(s.pipeline_state))
    allowed_agent = {tuple(np.round(maze.cell_world(i, j), 4)) for i, j in maze.maze.reset_cells["default"]}
    allowed_obj = {tuple(np.round(maze.cell_world(i, j), 4)) for i, j in maze.maze.reset_cells["O"]}
    for a, objs in zip(agent, objects):
        assert tuple(np.round(a, 4)) in allowed_agent
        assert all(tuple(np.round(o, 4)) in allowed_obj for o in objs)
        pts = np.vstack([a, objs])
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(3) * 99
        assert d.min() >= 0.5 * maze.maze.scale


def test_determinism_and_vmap_equals_single(det):
    env, reset, step, vreset, vstep = det
    keys = jax.random.split(jax.random.PRNGKey(5), N)
    a = jax.random.uniform(jax.random.PRNGKey(6), (N, 2), minval=-1, maxval=1)
    s1 = vstep(vreset(keys), a)
    s2 = vstep(vreset(keys), a)
    jax.tree.map(np.testing.assert_array_equal, s1.obs, s2.obs)
    for i in range(N):
        single = step(reset(keys[i]), a[i])
        np.testing.assert_allclose(single.obs["eye_0_0"], s1.obs["eye_0_0"][i], atol=1e-5)
        np.testing.assert_allclose(single.pipeline_state.qpos, s1.pipeline_state.qpos[i], atol=1e-5)
        np.testing.assert_allclose(single.reward, s1.reward[i], atol=1e-5)


def test_agent_moves_along_heading_and_turns():
    env = aci_jax.make_env(aci_jax.load_config("detection", ["env.agents.agent.heading=absolute"]))
    step = jax.jit(env.step)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    x0 = np.asarray(s.pipeline_state.qpos[:3])
    s = step(s, jnp.array([1.0, x0[2] / np.pi]))  # full speed, keep heading
    x1 = np.asarray(s.pipeline_state.qpos[:3])
    moved = x1[:2] - x0[:2]
    assert 0.1 < np.linalg.norm(moved) < 0.25  # ≤ 1 m/s for 0.2 s
    np.testing.assert_allclose(moved / np.linalg.norm(moved), [np.cos(x0[2]), np.sin(x0[2])], atol=0.05)
    for _ in range(3):
        s = step(s, jnp.array([-1.0, 0.5]))  # stand still, turn to +90°
    assert abs(float(s.pipeline_state.qpos[2]) - np.pi / 2) < 0.1


def test_relative_heading_turns_by_max_turn_per_step():
    cfg = aci_jax.load_config("detection", ["env.agents.agent.max_turn=30"])  # exp=detection: relative
    env = aci_jax.make_env(cfg)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    yaw0 = float(s.pipeline_state.qpos[2])
    s = step(s, jnp.array([-1.0, 0.0]))  # a1 = 0 keeps the heading
    assert abs(float(s.pipeline_state.qpos[2]) - yaw0) < 0.02
    for i in range(1, 4):  # a1 = 1 turns left by max_turn each step; -0.5 turns right by half
        s = step(s, jnp.array([-1.0, 1.0]))
    s = step(s, jnp.array([-1.0, -0.5]))
    assert abs(float(s.pipeline_state.qpos[2]) - (yaw0 + np.deg2rad(75.0))) < 0.05
    assert abs(float(env.steer(s.pipeline_state, jnp.float32(yaw0 + np.deg2rad(90.0)))) - 0.5) < 0.05
    assert float(env.steer(s.pipeline_state, jnp.float32(yaw0 - np.pi / 2))) == -1.0  # at most max_turn
    with pytest.raises(aci_jax.ConfigError, match="heading='sideways'"):
        aci_jax.make_env(aci_jax.load_config("detection", ["env.agents.agent.heading=sideways"]))


def test_auto_reset_and_episode_metrics(det):
    env, _, _, vreset, vstep = det
    s = vreset(jax.random.split(jax.random.PRNGKey(2), N))
    states = rollout(vstep, s, 7)
    done = np.stack([np.asarray(x.done) for x in states])
    assert done[5].all()  # time limit of 6 steps (unless an object was reached earlier)
    assert all(int(x) <= 6 for x in np.asarray(states[5].metrics["length"]))
    after = states[6]
    # every env whose episode ran to the 6-step limit was reset there: one step into its next episode
    # (one that ended early, on reaching an object, restarted sooner and is further on)
    early = done[:5].any(0)
    assert (~early).sum() > 0
    np.testing.assert_array_equal(np.asarray(after.info["episode"].step)[~early], 1)
    # The frame stack restarted at the reset: older frames are zero again.
    assert (np.asarray(states[5].obs["eye_0_0"])[:, 0] == 0).all()


def test_wall_contact_recorded_and_penalised():
    cfg = aci_jax.load_config("detection", ["env.agents.agent.init_yaw=90.0", "env.task.terminations={}",
                                            "env.task.truncations={}", "env.render.supersample=1"])
    env = aci_jax.make_env(cfg)
    step = jax.jit(env.step)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    contacts = 0
    for _ in range(100):  # run north into the border wall
        s = step(s, jnp.array([1.0, env.steer(s.pipeline_state, jnp.pi / 2)]))
        contacts += float(s.info["episode"].contacts > 0)
        if s.info["episode"].contacts > 0:
            break
    assert contacts > 0
    assert float(s.reward) <= -0.5  # the -1 contact penalty dominates this step
    assert float(s.pipeline_state.qpos[1]) < 11.0 - 2.0 + 0.01  # stopped by the wall (y = 11 - scale)


def test_eye_sees_object_on_the_left_and_padding_is_exact():
    """A 1×1 eye at lon 90° sees the goal placed to the agent's left; 1×1 inside 8×8 is identical."""
    cfg = aci_jax.load_config("detection", ["env.agents.agent.eyes.resolution=[1,1]",
                                            "env.agents.agent.eyes.fov=[20,20]",
                                            "env.agents.agent.eyes.lon_range=[90,90]",
                                            "env.render.max_resolution=8", "env.render.max_eyes=2"])
    env = aci_jax.make_env(cfg)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    data = s.pipeline_state
    qpos = data.qpos.at[:3].set(jnp.array([0.0, -4.0, 0.0]))  # facing +x
    goal = env.world.objects["goal"].mocap
    far = jnp.array([50.0, 50.0, -10.0])
    mocap = data.mocap_pos.at[goal].set(jnp.array([0.0, -1.5, 0.5]))
    mocap = mocap.at[env.world.objects["adversary"].mocap].set(far)
    data = jax.jit(lambda d: __import__("mujoco").mjx.kinematics(env.mx, d))(data.replace(qpos=qpos, mocap_pos=mocap))
    img, depth, geom = jax.jit(env.render_eyes)(data, s.info["eyes"], s.info["episode"].wall_material)
    assert int(geom[0, 0, 0, 0]) == env.world.objects["goal"].geom
    assert geom.shape[1:3] == (8, 8) and (np.asarray(img[0])[1:, :] == 0).all() and (np.asarray(img[1]) == 0).all()
    # Same eye without padding.
    cfg2 = aci_jax.load_config("detection", ["env.agents.agent.eyes.resolution=[1,1]",
                                             "env.agents.agent.eyes.fov=[20,20]",
                                             "env.agents.agent.eyes.lon_range=[90,90]"])
    env2 = aci_jax.make_env(cfg2)
    img2, _, _ = jax.jit(env2.render_eyes)(data, env2.default_eyes, s.info["episode"].wall_material)
    np.testing.assert_allclose(img2[0, 0, 0], img[0, 0, 0], atol=1e-6)
    # And the eye at lon 0 (looking forward, +x) does not see the goal.
    eyes = env.default_eyes.replace(lon_range=jnp.array([0.0, 0.0]))
    _, _, geom0 = jax.jit(env.render_eyes)(data, eyes, s.info["episode"].wall_material)
    assert int(geom0[0, 0, 0, 0]) != env.world.objects["goal"].geom


@pytest.mark.parametrize("obj", ["goal", "adversary"])
def test_stripe_orientation_visible_to_10x10_eye(obj):
    """Facing a striped object, the goal's stripes vary across columns, the adversary's across rows."""
    cfg = aci_jax.load_config("detection", ["env.agents.agent.eyes.fov=[30,30]"])
    env = aci_jax.make_env(cfg)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    data = s.pipeline_state
    # Facing +y (the adversary's latitude bands read horizontal from every side).
    qpos = data.qpos.at[:3].set(jnp.array([0.0, 0.0, np.pi / 2]))
    other = "adversary" if obj == "goal" else "goal"
    mocap = data.mocap_pos.at[env.world.objects[obj].mocap].set(jnp.array([0.0, 1.4, 0.2]))
    mocap = mocap.at[env.world.objects[other].mocap].set(jnp.array([50.0, 50.0, -10.0]))
    data = jax.jit(lambda d: __import__("mujoco").mjx.kinematics(env.mx, d))(data.replace(qpos=qpos, mocap_pos=mocap))
    img, _, geom = jax.jit(env.render_eyes)(data, env.default_eyes, s.info["episode"].wall_material)
    img = np.asarray(img[0])
    assert (np.asarray(geom[0]) == env.world.objects[obj].geom).mean() > 0.95
    redness = img[..., 0] - img[..., 2]
    across_cols = np.abs(np.diff(redness, axis=1)).mean()
    across_rows = np.abs(np.diff(redness, axis=0)).mean()
    if obj == "goal":
        assert across_cols > 2 * across_rows
    else:
        assert across_rows > 2 * across_cols


def test_one_pixel_eye_sees_goal_and_adversary_alike():
    """A 1×1 eye (45°×45°, one ray) facing the goal or the adversary 2.5 m away sees one colour for
    both: render_eyes filters the stripes over each ray's footprint (from the eye's fov and
    resolution), so no orientation or colour cue survives in one pixel. Nearest-texel sampling
    differed by 1.0 per channel here."""
    cfg = aci_jax.load_config("detection", ["env.agents.agent.eyes.resolution=[1,1]",
                                            "env.agents.agent.eyes.fov=[45,45]", "env.render.supersample=1"])
    env = aci_jax.make_env(cfg)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    kin = jax.jit(lambda d: __import__("mujoco").mjx.kinematics(env.mx, d))
    render = jax.jit(env.render_eyes)
    far = jnp.array([50.0, 50.0, -10.0])
    for th in (0.3, 1.1):
        seen = []
        for obj, other in (("goal", "adversary"), ("adversary", "goal")):
            data = s.pipeline_state
            qpos = data.qpos.at[:3].set(jnp.array([0.0, 0.0, th]))
            pos = jnp.array([2.5 * np.cos(th), 2.5 * np.sin(th), 0.5])
            mocap = data.mocap_pos.at[env.world.objects[obj].mocap].set(pos)
            mocap = mocap.at[env.world.objects[other].mocap].set(far)
            data = kin(data.replace(qpos=qpos, mocap_pos=mocap))
            img, _, geom = render(data, s.info["eyes"], s.info["episode"].wall_material)
            assert int(geom[0, 0, 0, 0]) == env.world.objects[obj].geom
            seen.append(np.asarray(img[0, 0, 0]))
        np.testing.assert_allclose(seen[0], seen[1], atol=0.03)
        assert abs(seen[0][0] - seen[0][2]) < 0.05


def test_eval_variant_respawns_reached_objects_instead_of_ending():
    cfg = aci_jax.load_config("detection", ["env.render.supersample=1"])
    env = aci_jax.make_env(cfg, eval=True)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    goal = env.world.objects["goal"].mocap
    pos = s.pipeline_state.qpos[:2]
    near = jnp.array([pos[0] + 0.5, pos[1], 0.5])
    s = s.replace(pipeline_state=s.pipeline_state.replace(mocap_pos=s.pipeline_state.mocap_pos.at[goal].set(near)))
    s2 = jax.jit(env.step)(s, jnp.array([-1.0, 0.0]))
    assert float(s2.done) == 0.0  # no termination in the evaluation variant
    assert float(s2.reward) > 5.0  # +10 × quickness for the goal
    moved = np.asarray(s2.pipeline_state.mocap_pos[goal, :2])
    assert np.linalg.norm(moved - np.asarray(near[:2])) > 0.5  # respawned on a fresh cell
    cells = {tuple(np.round(env.world.mazes[0].cell_world(i, j), 4)) for i, j in env.world.mazes[0].maze.reset_cells["O"]}
    assert tuple(np.round(moved, 4)) in cells


@pytest.mark.parametrize("selection", ["cycle", "random"])
def test_maze_choice_per_episode(selection):
    cfg = aci_jax.load_config("detection", [
        "+maze@env.mazes.OPEN_LARGE=OPEN_LARGE", "env.mazes.OPEN_LARGE.agent_id_map={default: [agent], O: [goal, adversary]}",
        f"env.maze_selection={selection}", "env.max_episode_steps=2", "env.render.supersample=1",
        "env.agents.agent.eyes.resolution=[2,2]"])
    env = aci_jax.make_env(cfg)
    step = jax.jit(jax.vmap(env.step))
    s = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 16))
    mazes = [np.asarray(s.info["episode"].maze)]
    for _ in range(6):
        s = step(s, jnp.zeros((16, 2)) - 1.0)  # stand still: every episode ends at the time limit
        mazes.append(np.asarray(s.info["episode"].maze))
    mazes = np.stack(mazes)[::2]  # one row per episode
    if selection == "cycle":
        assert (mazes[0] == 0).all() and (mazes[1] == 1).all() and (mazes[2] == 0).all()
    else:
        assert set(np.unique(mazes)) == {0, 1}
    # Agents spawn inside the maze of their episode.
    x = np.asarray(s.pipeline_state.qpos[:, 0])
    offsets = np.array([m.offset[0] for m in env.world.mazes])
    widths = np.array([m.maze.width for m in env.world.mazes])
    k = np.asarray(s.info["episode"].maze)
    assert (np.abs(x - offsets[k]) < widths[k] / 2).all()
