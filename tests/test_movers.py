"""Scripted movers and the tasks built on them (tracking, prey, light seeking).

Mover functions run on constructed states of a small hand-made maze (cheap: no env); the env tests
share one compiled prey env (a walking goal and a predator) and its evaluation variant.
"""

from collections import deque
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aci_jax
from aci_jax.config import ConfigError
from aci_jax.envs import movers as M
from aci_jax.world.maze import build_maze, next_cell_table

# A corridor that turns twice, a dead-end pocket and one walled-in free cell (row 5, col 5).
MAP = """[
  [1, 1, 1, 1, 1, 1, 1],
  [1, 0, 0, 0, 0, 0, 1],
  [1, 1, 1, 1, 1, 0, 1],
  [1, 0, 0, 0, 0, 0, 1],
  [1, 0, 1, 1, 1, 1, 1],
  [1, 0, 1, 1, 1, 0, 1],
  [1, 1, 1, 1, 1, 1, 1],
]"""
MAZE = build_maze("T", MAP)
COLS = MAZE.shape[1]
TABLES = M.maze_tables(SimpleNamespace(mazes=[SimpleNamespace(maze=MAZE, offset=np.array([3.0, -1.0]))]))
ISOLATED = 5 * COLS + 5


def bfs(wall, goal):
    dist = {goal: 0}
    queue = deque([goal])
    while queue:
        c = queue.popleft()
        i, j = divmod(c, wall.shape[1])
        for di, dj in M_STEPS:
            ni, nj = i + di, j + dj
            if 0 <= ni < wall.shape[0] and 0 <= nj < wall.shape[1] and not wall[ni, nj]:
                n = ni * wall.shape[1] + nj
                if n not in dist:
                    dist[n] = dist[c] + 1
                    queue.append(n)
    return dist


M_STEPS = [(-1, 0), (1, 0), (0, -1), (0, 1)]
FREE = [int(c) for c in np.flatnonzero(~MAZE.wall.reshape(-1))]


def world(bodies=((0.0, 0.0),)):
    return M.MoverWorld(bodies=jnp.asarray(bodies, jnp.float32), maze=jnp.int32(0), tables=TABLES, dt=0.2)


def centre(cell):
    return np.asarray(TABLES.centre(0, jnp.int32(cell)))


def test_next_cell_table_follows_shortest_free_paths():
    nxt = next_cell_table(MAZE.wall)
    assert nxt.shape == (MAZE.wall.size, MAZE.wall.size)
    for goal in FREE:
        dist = bfs(MAZE.wall, goal)
        for c in FREE:
            if c not in dist:  # no path: stay
                assert nxt[goal, c] == c
                continue
            path = [c]
            while path[-1] != goal:
                n = int(nxt[goal, path[-1]])
                (i, j), (ni, nj) = divmod(path[-1], COLS), divmod(n, COLS)
                assert abs(i - ni) + abs(j - nj) == 1 and not MAZE.wall[ni, nj]  # a side step onto a free cell
                path.append(n)
                assert len(path) <= len(FREE)
            assert len(path) - 1 == dist[c]  # shortest
    walls = np.flatnonzero(MAZE.wall.reshape(-1))
    np.testing.assert_array_equal(nxt[FREE[0], walls], walls)
    np.testing.assert_array_equal(nxt[walls[0], FREE], FREE)


def test_grid_geometry_matches_the_maze():
    for c in FREE:
        i, j = divmod(c, COLS)
        np.testing.assert_allclose(centre(c), MAZE.cell_center(i, j) + [3.0, -1.0], atol=1e-5)
        assert int(TABLES.cell_of(0, jnp.asarray(centre(c) + 0.9))) == c
        assert bool(TABLES.is_free(0, jnp.asarray(centre(c))))
    assert not bool(TABLES.is_free(0, jnp.asarray(centre(0))))
    assert not bool(TABLES.is_free(0, jnp.asarray([100.0, 0.0])))


@jax.jit
def walk(me, key):
    def body(me, k):
        me = M.maze_random(me, world(), k, speed=1.0, threshold=0.0, max_speed=2.0)  # 0.4 m per step
        return me, me

    return jax.lax.scan(body, me, jax.random.split(key, 80))[1]


def test_walker_reaches_its_cell_along_free_cells_only():
    start, goal = 1 * COLS + 1, 5 * COLS + 1  # top-left end to the bottom of the pocket: 11 cells
    me = M.Mover(jnp.asarray(centre(start)), jnp.int32(start), jnp.int32(goal))
    trace = walk(me, jax.random.PRNGKey(0))
    pos, goals = np.asarray(trace.pos), np.asarray(trace.goal)
    arrive = np.flatnonzero(np.linalg.norm(pos - centre(goal), axis=-1) < 1e-5)
    assert arrive.size and arrive[0] <= 12 * 5 + 1  # 12 cells of 2 m at 0.4 m per step
    assert (goals[:arrive[0] + 1] == goal).all() and goals[arrive[0] + 1] != goal  # then a new random goal
    # Every position, and every point between consecutive positions, lies on a free cell.
    pts = (pos[:-1, None] + np.linspace(0, 1, 9)[None, :, None] * (pos[1:] - pos[:-1])[:, None]).reshape(-1, 2)
    assert np.asarray(jax.vmap(lambda p: TABLES.is_free(0, p))(jnp.asarray(pts))).all()
    assert set(goals[arrive[0] + 1:]) <= set(FREE)


def test_walker_leaves_an_unreachable_goal():
    me = M.Mover(jnp.asarray(centre(FREE[0])), jnp.int32(FREE[0]), jnp.int32(ISOLATED))
    keys = jax.random.split(jax.random.PRNGKey(1), 32)
    goals = np.asarray(jax.vmap(lambda k: M.maze_random(me, world(), k, threshold=0.0).goal)(keys))
    assert np.mean(goals != ISOLATED) > 0.8 and set(goals) <= set(FREE)


@jax.jit
def chase(me, target):
    def body(me, _):
        me = M.maze_optimal(me, world([target]), jax.random.PRNGKey(0), target=0, speed=1.0, max_speed=2.0)
        return me, me

    return jax.lax.scan(body, me, None, length=80)[1]


def test_follower_closes_the_path_distance_and_reaches_its_target():
    start, tcell = 1 * COLS + 1, 5 * COLS + 1
    target = centre(tcell) + [0.3, -0.4]  # off the cell's centre: the last leg heads straight for it
    trace = chase(M.Mover(jnp.asarray(centre(start)), jnp.int32(start), jnp.int32(start)), jnp.asarray(target))
    pos = np.asarray(trace.pos)
    dist = bfs(MAZE.wall, tcell)
    cells = [int(TABLES.cell_of(0, jnp.asarray(p))) for p in pos]
    hops = [dist[c] for c in cells]
    assert all(b <= a for a, b in zip(hops, hops[1:]))  # never further along the maze
    np.testing.assert_allclose(pos[-1], target, atol=1e-5)
    assert np.asarray(jax.vmap(lambda p: TABLES.is_free(0, p))(trace.pos)).all()


def test_predator_closes_the_distance_to_the_agent():
    agent = centre(3 * COLS + 2)
    me = M.Mover(jnp.asarray(centre(3 * COLS + 5)), jnp.int32(3 * COLS + 5), jnp.int32(0))
    d0 = np.linalg.norm(np.asarray(me.pos) - agent)
    for k in range(5):
        me = M.predator(me, world([agent]), jax.random.PRNGKey(k), speed=1.0)
    assert np.linalg.norm(np.asarray(me.pos) - agent) == pytest.approx(d0 - 5 * 0.2, abs=1e-4)


def test_prey_opens_the_distance_and_stays_off_walls():
    hunter = centre(3 * COLS + 2)
    start = centre(3 * COLS + 3)
    step = jax.jit(jax.vmap(lambda me, k: M.prey(me, world([hunter]), k, predators=(0,), speed=1.0, radius=0.5)))
    n = 64
    me = M.Mover(jnp.tile(jnp.asarray(start), (n, 1)), jnp.zeros(n, jnp.int32), jnp.zeros(n, jnp.int32))
    for k in range(10):
        me = step(me, jax.random.split(jax.random.PRNGKey(k), n))
    pos = np.asarray(me.pos)
    assert np.linalg.norm(pos - hunter, axis=-1).mean() > np.linalg.norm(start - hunter) + 0.5
    ring = np.array([[0, 0], [0.5, 0], [-0.5, 0], [0, 0.5], [0, -0.5]])
    assert np.asarray(jax.vmap(lambda p: TABLES.is_free(0, p))(jnp.asarray((pos[:, None] + ring).reshape(-1, 2)))).all()
    # Without noise the prey runs straight away from the nearest of two predators.
    far = centre(1 * COLS + 1)
    out = M.prey(M.Mover(jnp.asarray(start), jnp.int32(0), jnp.int32(0)), world([far, hunter]), jax.random.PRNGKey(0),
                 predators=(0, 1), speed=1.0, noise=0.0)
    np.testing.assert_allclose(np.asarray(out.pos) - start, [0.2, 0.0], atol=1e-5)


def test_movers_vmap_equals_single():
    n = 4
    starts = jnp.asarray(FREE[:n], jnp.int32)
    goals = jnp.asarray(FREE[-n:], jnp.int32)
    me = M.Mover(jax.vmap(lambda c: TABLES.centre(0, c))(starts), starts, goals)
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    w = world([centre(FREE[2])])
    for fn in (lambda m, k: M.maze_random(m, w, k, speed=1.0), lambda m, k: M.predator(m, w, k, speed=1.0),
               lambda m, k: M.prey(m, w, k, speed=1.0)):
        batch = jax.vmap(fn)(me, keys)
        for i in range(n):
            one = fn(jax.tree.map(lambda x: x[i], me), keys[i])
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[i], atol=1e-6), one, batch)


def test_task_step_functions_and_outcome():
    from aci_jax.envs import tasks as T

    task = T.make_task({"rewards": {}, "step_fns": {"respawn": {"fn": "respawn_on_reach", "targets": ["goal", "adversary"],
                                                                 "distance": 1.0}}}, ["goal", "adversary", "light"])
    ctx = T.StepContext(pos=jnp.zeros(2), prev_pos=jnp.zeros(2), start_pos=jnp.zeros(2),
                        objects=jnp.asarray([[3.0, 0.0], [0.5, 0.0], [0.2, 0.0]]), prev_objects=jnp.zeros((3, 2)),
                        contact=jnp.bool_(False), step=jnp.int32(5), max_steps=128, ret=jnp.float32(0.0),
                        terminated=jnp.bool_(False), truncated=jnp.bool_(False))
    np.testing.assert_array_equal(task.effects(ctx).respawn, [False, True, False])  # the light is no target
    assert int(task.first_reach(ctx)) == 2  # the adversary, second target
    success, failure = task.outcome(ctx, jnp.bool_(True), jnp.int32(2))
    assert not bool(success) and bool(failure)
    assert bool(task.outcome(ctx, jnp.bool_(True), jnp.int32(1))[0])
    assert not any(map(bool, task.outcome(ctx, jnp.bool_(False), jnp.int32(1))))  # decided at the episode's end


# -- config -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("env.agents.goal.mover.fn=teleport", "env.agents.goal.mover.fn='teleport'; valid: ['maze_optimal', 'maze_random', 'predator', 'prey']"),
    ("+env.agents.goal.mover.sped=1", "env.agents.goal.mover: unknown argument(s) ['sped'] for mover 'maze_random'"),
    ("env.agents.adversary.mover.fn=maze_optimal,+env.agents.adversary.mover.target=wolf",
     "env.agents.adversary.mover.target: 'wolf' is not a body"),
    ("env.agents.adversary.mover.fn=maze_optimal", "env.agents.adversary.mover.target is missing"),
    ("env.agents.adversary.mover.fn=prey,+env.agents.adversary.mover.predators=agent",
     "env.agents.adversary.mover.predators='agent' must be a list"),
    ("env.agents.goal.mover.speed=2", "env.agents.goal.mover.speed=2 must be a number in [-1, 1]"),
    ("+env.agents.goal.mover.max_speed=0", "env.agents.goal.mover.max_speed=0 must be a positive number"),
    ("+env.agents.agent.mover={fn: maze_random}", "env.agents.agent.mover: only objects"),
    ("+env.lighting.moon=true", "env.lighting: unknown key(s) ['moon']; valid: ['sun', 'headlight', 'wall_emission']"),
    ("env.lighting.sun=1", "env.lighting.sun=1 must be true or false"),
])
def test_bad_mover_and_lighting_config_names_the_key(override, message):
    exp = "light_seeking" if "lighting" in override else "prey" if "adversary" in override else "tracking"
    with pytest.raises(ConfigError) as e:
        aci_jax.load_config(exp, override.split(","))
    assert message in str(e.value)


# -- the env ----------------------------------------------------------------------------------------

FAST = ["env.max_episode_steps=20", "env.frame_stack=2", "env.n_envs=4",  # movers 10x faster: visible in few steps
        "+env.agents.goal.mover.max_speed=10", "+env.agents.adversary.mover.max_speed=10"]


@pytest.fixture(scope="module")
def prey_env():
    cfg = aci_jax.load_config("prey", FAST)
    env = aci_jax.make_env(cfg)
    return env, jax.jit(env.reset), jax.jit(env.step), jax.jit(jax.vmap(env.step))


def place(env, state, agent=None, yaw=None, **objects):
    """The state with the agent and objects (name=xy) moved; movers' waypoints follow."""
    d, ep = state.pipeline_state, state.info["episode"]
    qpos = d.qpos
    if agent is not None:
        qpos = qpos.at[env.agent.qpos_adr[:2]].set(jnp.asarray(agent, jnp.float32))
    if yaw is not None:
        qpos = qpos.at[env.agent.qpos_adr[2]].set(yaw)
    mocap = d.mocap_pos
    for name, xy in objects.items():
        mocap = mocap.at[env.world.objects[name].mocap, :2].set(jnp.asarray(xy, jnp.float32))
    d = d.replace(qpos=qpos, mocap_pos=mocap)
    objs = env.object_xy(d)
    ep = ep.replace(prev_pos=qpos[env.agent.qpos_adr[:2]], prev_objects=objs,
                    mover_cell=env._mover_cells(ep.maze, objs), mover_goal=env._mover_cells(ep.maze, objs))
    return state.replace(pipeline_state=d, info={**state.info, "episode": ep})


def test_movers_move_inside_the_step_and_stay_on_free_cells(prey_env):
    env, reset, step, _ = prey_env
    maze = env.world.mazes[0]
    s = place(env, reset(jax.random.PRNGKey(0)), agent=maze.cell_world(9, 1), goal=maze.cell_world(5, 4),
              adversary=maze.cell_world(1, 7))
    tables = env.tables
    traj = [np.asarray(env.object_xy(s.pipeline_state))]
    for _ in range(8):
        s = step(s, jnp.array([-1.0, 0.0]))  # the agent stands still
        assert not float(s.done)
        traj.append(np.asarray(env.object_xy(s.pipeline_state)))
    traj = np.stack(traj)
    steps = np.linalg.norm(np.diff(traj, axis=0), axis=-1)
    assert (steps.max(0) > 0.1).all() and (steps <= 0.2501).all()  # both move, at most their speed
    free = jax.vmap(lambda p: tables.is_free(s.info["episode"].maze, p))(jnp.asarray(traj.reshape(-1, 2)))
    assert np.asarray(free).all()


def test_predator_catches_a_still_agent_and_truncates(prey_env):
    env, reset, step, _ = prey_env
    s = reset(jax.random.PRNGKey(1))
    maze = env.world.mazes[0]
    s = place(env, s, agent=maze.cell_world(4, 4), adversary=maze.cell_world(4, 6), goal=maze.cell_world(8, 2))
    d0 = np.linalg.norm(maze.cell_world(4, 4) - maze.cell_world(4, 6))
    dist = []
    for _ in range(16):
        s = step(s, jnp.array([-1.0, 0.0]))
        if float(s.done):
            break
        dist.append(float(np.linalg.norm(s.info["episode"].prev_pos - env.object_xy(s.pipeline_state)[1])))
    assert all(b < a for a, b in zip([d0] + dist, dist))  # closing in every step
    assert float(s.done) and float(s.metrics["failure"]) == 1.0 and float(s.metrics["success"]) == 0.0
    assert float(s.reward) < -0.9  # on_truncation (and the walking goal's small distance change)
    assert int(s.info["episode"].step) == 0  # reset in place


def test_reaching_the_walking_goal_terminates_with_success(prey_env):
    env, reset, step, _ = prey_env
    s = reset(jax.random.PRNGKey(2))
    maze = env.world.mazes[0]
    agent = maze.cell_world(5, 3)
    s = place(env, s, agent=agent, goal=agent + [0.6, 0.0], adversary=maze.cell_world(8, 6))
    s = step(s, jnp.array([-1.0, 0.0]))
    assert float(s.done) and float(s.metrics["success"]) == 1.0
    assert float(s.reward) > 3.0  # 4 × quickness


def test_vmap_equals_single_env(prey_env):
    env, reset, step, vstep = prey_env
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    states = [reset(k) for k in keys]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *states)
    a = jax.random.uniform(jax.random.PRNGKey(6), (3, 2), minval=-1, maxval=1)
    for _ in range(3):
        batch = vstep(batch, a)
        states = [step(s, a[i]) for i, s in enumerate(states)]
    for i, s in enumerate(states):
        np.testing.assert_allclose(env.object_xy(s.pipeline_state),
                                   env.object_xy(jax.tree.map(lambda x: x[i], batch.pipeline_state)), atol=1e-5)
        np.testing.assert_array_equal(s.info["episode"].mover_cell, batch.info["episode"].mover_cell[i])
        np.testing.assert_allclose(s.reward, batch.reward[i], atol=1e-5)


def test_eyes_see_a_mover_where_it_moved(prey_env):
    env, reset, step, _ = prey_env
    s = reset(jax.random.PRNGKey(3))
    maze = env.world.mazes[0]
    agent, goal0 = maze.cell_world(5, 1), maze.cell_world(5, 4)
    s = place(env, s, agent=agent, yaw=0.0, goal=goal0, adversary=maze.cell_world(9, 6))
    for _ in range(3):
        s = step(s, jnp.array([-1.0, 0.0]))
    goal = np.asarray(env.object_xy(s.pipeline_state)[0])
    assert np.linalg.norm(goal - goal0) > 0.1  # it moved
    yaw = float(np.arctan2(*(goal - agent)[::-1]))
    s = place(env, s, yaw=yaw)
    _, depth, geom = jax.jit(env.render_eyes)(s.pipeline_state, env.default_eyes, s.info["episode"].wall_material)
    assert (np.asarray(geom)[0, 4:6, 4:6] == env.world.objects["goal"].geom).mean() > 0.5
    r = env.world.objects["goal"].radius
    assert float(np.asarray(depth)[0, 4:6, 4:6].min()) == pytest.approx(np.linalg.norm(goal - agent) - r - env.agent.radius, abs=0.15)


def test_eval_variant_respawns_a_reached_mover_and_restarts_its_path():
    cfg = aci_jax.load_config("prey", FAST)
    env = aci_jax.make_env(cfg, eval=True)
    s = jax.jit(env.reset)(jax.random.PRNGKey(4))
    maze = env.world.mazes[0]
    agent = maze.cell_world(5, 1)  # a default-group cell: the goal respawns on a group-O cell, >= 2 m away
    s = place(env, s, agent=agent, goal=agent + [0.5, 0.0], adversary=maze.cell_world(8, 6))
    s = jax.jit(env.step)(s, jnp.array([-1.0, 0.0]))
    assert not float(s.done) and float(s.reward) > 9.0  # +10 × quickness, the episode goes on
    goal = np.asarray(env.object_xy(s.pipeline_state)[0])
    spawn = {tuple(np.round(maze.cell_world(i, j), 4)) for i, j in maze.maze.reset_cells["O"]}
    assert tuple(np.round(goal, 4)) in spawn and np.linalg.norm(goal - agent) > 1.0
    assert int(s.info["episode"].mover_cell[0]) == int(env.tables.cell_of(0, jnp.asarray(goal)))
    assert int(s.info["episode"].first_reach) == 1


def test_tracking_moves_two_walkers_along_free_cells():
    """Tracking: the goal and the adversary both walk (each step at most their speed, both away from
    where they started after 6 steps) and stay on free cells while the agent stands still."""
    env = aci_jax.make_env(aci_jax.load_config("tracking", FAST))
    assert [env.object_names[k] for k, _ in env.movers] == ["goal", "adversary"]
    assert env.tables.nxt.shape == (1, 99, 99)
    s = jax.jit(env.reset)(jax.random.PRNGKey(3))
    step = jax.jit(env.step)
    traj = [np.asarray(env.object_xy(s.pipeline_state))]
    for _ in range(6):
        s = step(s, jnp.array([-1.0, 0.0]))
        traj.append(np.asarray(env.object_xy(s.pipeline_state)))
    traj = np.stack(traj)
    steps = np.linalg.norm(np.diff(traj, axis=0), axis=-1)
    assert (np.linalg.norm(traj[-1] - traj[0], axis=-1) > 0.1).all() and (steps <= 0.2501).all()
    free = jax.vmap(lambda p: env.tables.is_free(s.info["episode"].maze, p))(jnp.asarray(traj.reshape(-1, 2)))
    assert np.asarray(free).all()


def test_light_seeking_is_dark_but_the_light_shows_even_to_a_1x1_eye():
    env = aci_jax.make_env(aci_jax.load_config("light_seeking", ["env.frame_stack=1"]))
    assert env.world.model.vis.headlight.active == 0 and env.world.model.nlight == 1  # the goal's only
    assert tuple(env.eyes_cfg.resolution) == (1, 1)
    s = jax.jit(env.reset)(jax.random.PRNGKey(0))
    maze = env.world.mazes[0]
    agent = maze.cell_world(9, 4)
    render = jax.jit(env.render_eyes)
    seen = {}
    for rows, goal in ((2, maze.cell_world(7, 4)), (4, maze.cell_world(5, 4))):
        for facing, yaw in (("towards", np.pi / 2), ("aside", 0.0)):
            st = place(env, s, agent=agent, yaw=yaw, goal=goal)
            seen[rows, facing] = float(np.asarray(render(st.pipeline_state, env.default_eyes,
                                                         st.info["episode"].wall_material)[0])[0, 0, 0].mean())
    assert seen[2, "towards"] > 1.5 * seen[4, "towards"] > 0.02  # brighter nearer
    assert seen[2, "towards"] > 3 * seen[2, "aside"] and seen[4, "towards"] > 1.5 * seen[4, "aside"]
    dark = place(env, s, agent=agent, yaw=np.pi / 2, goal=maze.cell_world(9, 7))  # light behind a far corner
    assert float(np.asarray(render(dark.pipeline_state, env.default_eyes,
                                   dark.info["episode"].wall_material)[0]).max()) < 0.01
