"""Map parsing and world geometry."""

import numpy as np
import pytest

import aci_jax.config as C
from aci_jax.world.maze import MazeError, build_maze, parse_map
from aci_jax.world.scene import build_world

SMALL = """[
  [1, 1:A, 1],
  [1, R,   0],
  [1, R:X, 1],
]"""


def test_parse_tokens_and_groups():
    m = build_maze("small", SMALL, scale=2.0)
    assert m.shape == (3, 3)
    assert m.wall.tolist() == [[True, True, True], [True, False, False], [True, False, True]]
    assert m.wall_group[0, 1] == "A" and m.wall_group[0, 0] == "default"
    assert m.reset_cells == {"default": [(1, 1)], "X": [(2, 1)]}


def test_cell_centres_follow_aci_formula():
    m = build_maze("small", SMALL, scale=2.0)
    # x = (j + 0.5)·scale − width/2, y = length/2 − (i + 0.5)·scale
    np.testing.assert_allclose(m.cell_center(0, 0), [-2.0, 2.0])
    np.testing.assert_allclose(m.cell_center(2, 1), [0.0, -2.0])


def test_flips_and_rotation():
    m = build_maze("small", SMALL, hflip=True)
    assert m.reset_cells["default"] == [(1, 1)] and m.wall[1].tolist() == [False, False, True]
    m = build_maze("small", SMALL, vflip=True)
    assert m.reset_cells["X"] == [(0, 1)]
    m = build_maze("small", SMALL, rotation=90)  # CCW: the first column becomes the last row
    assert m.wall[2].tolist() == [True, True, True]


@pytest.mark.parametrize("bad", ["[[1, 2]]", "[[1, Q]]", "[[1, R:]]", "[[1, 0], [1]]", "1, 0"])
def test_bad_maps_name_the_problem(bad):
    with pytest.raises(MazeError, match="maze 'bad'"):
        parse_map(bad, "bad")


def test_open_maze_walls_are_merged_boxes_at_the_right_place():
    cfg = C.load_config("detection")
    world = build_world(C.env_config(cfg))
    m = world.model
    info = world.mazes[0]
    maze = info.maze
    assert maze.shape == (11, 9)
    # The OPEN border merges into 4 boxes; every wall cell is covered by exactly its box.
    assert len(world.wall_geoms) == 4
    for i, j in zip(*np.nonzero(maze.wall)):
        g = info.cell_geom[i, j]
        x, y = info.cell_world(i, j)
        lo = m.geom_pos[g] - m.geom_size[g]
        hi = m.geom_pos[g] + m.geom_size[g]
        assert lo[0] < x < hi[0] and lo[1] < y < hi[1]
        np.testing.assert_allclose([m.geom_pos[g][2], m.geom_size[g][2]], [0.5, 0.5])  # scale/2·height
    assert (info.cell_geom[~maze.wall] == -1).all()


def test_spawn_cells_per_group_in_reference_mazes():
    cfg = C.load_config("detection")
    maze = build_world(C.env_config(cfg)).mazes[0].maze
    assert len(maze.reset_cells["O"]) == 23 and len(maze.reset_cells["default"]) == 26
    nav = build_world(C.env_config(C.load_config("navigation"))).mazes[0].maze
    assert nav.reset_cells["E"] == [(1, 3), (1, 8)] and nav.reset_cells["O"] == [(37, 6)]


def test_several_mazes_side_by_side():
    cfg = C.load_config("navigation", ["+maze@env.mazes.OPEN=OPEN",
                                        "env.mazes.OPEN.agent_id_map={default: [agent], O: [goal]}"])
    world = build_world(C.env_config(cfg))
    a, b = world.mazes
    assert a.offset[0] < b.offset[0]
    # No overlap along x, and both mazes' walls exist in the one model.
    assert a.offset[0] + a.maze.width / 2 < b.offset[0] - b.maze.width / 2
    assert (a.cell_geom.max() >= 0) and (b.cell_geom.max() >= 0)


def test_markers_in_group_2_and_stripes_turned_for_aci_adversary():
    world = build_world(C.env_config(C.load_config("detection")))
    m = world.model
    assert m.geom("goal_marker").group[0] == 2 and m.geom("adversary_marker").group[0] == 2
    np.testing.assert_allclose(m.geom("goal").quat, [1, 0, 0, 0])
    np.testing.assert_allclose(m.geom("adversary").quat, [1, 0, 0, 0])  # upright latitude bands
    aci = build_world(C.env_config(C.load_config("detection_aci"))).model
    np.testing.assert_allclose(aci.geom("adversary").quat, [np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0], atol=1e-6)


def _user_maze_overrides(folder):
    return [f"hydra.searchpath=[file://{folder}]", "~env.mazes.OPEN", "+maze@env.mazes.CORRIDOR=CORRIDOR"]


def test_user_maze_outside_configs(tmp_path):
    """A map file in the user's own folder (README's example, examples/mazes/) composes through
    hydra.searchpath, builds a world with its cells and groups, and gets the built-in maps'
    validation: a bad cell is a ConfigError naming the maze's key."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "mazes"
    cfg = C.load_config("detection", _user_maze_overrides(example))
    world = build_world(C.env_config(cfg))
    (mi,) = world.mazes
    assert mi.maze.name == "CORRIDOR" and mi.maze.shape == (4, 7)
    assert sorted(mi.maze.reset_cells["O"]) == [(1, 5), (2, 5)]
    (tmp_path / "maze").mkdir()
    text = (example / "maze" / "CORRIDOR.yaml").read_text().replace("[1, R, 0, 0, 0, R:O, 1],", "[1, R, 0, 0, 0, Q, 1],", 1)
    (tmp_path / "maze" / "CORRIDOR.yaml").write_text(text)
    with pytest.raises(C.ConfigError, match=r"env\.mazes\.CORRIDOR: .*unknown cell 'Q'"):
        C.load_config("detection", _user_maze_overrides(tmp_path))
