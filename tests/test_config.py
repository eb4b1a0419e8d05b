"""Config composition and the errors bad input gets."""

import pytest

from aci_jax import ConfigError, load_config
from aci_jax.config import env_config


def test_exp_selects_whole_task():
    det = load_config("detection")
    assert list(det.env.mazes) == ["OPEN"] and det.env.max_episode_steps == 128
    assert det.env.agents.agent.eyes.resolution == [10, 10] and det.env.agents.goal.texture == "vertical_8_rb"
    nav = load_config("navigation")
    assert list(nav.env.mazes) == ["COMPLEX"] and list(env_config(nav, eval=True).mazes) == ["COMPLEX_LARGE", "COMPLEX"]
    assert "respawn" in env_config(det, eval=True).task.step_fns


def test_overrides_apply():
    cfg = load_config("detection", ["env.agents.agent.eyes.resolution=[3,4]", "env.n_envs=7"])
    assert cfg.env.agents.agent.eyes.resolution == [3, 4] and cfg.env.n_envs == 7


@pytest.mark.parametrize("overrides, match", [
    (["env.agents.agent.eyes.resolution=[0,10]"], r"eyes\.resolution=\[0, 10\].*>= 1"),
    (["env.agents.agent.eyes.fov=[0,10]"], r"eyes\.fov=.*\(0, 180\)"),
    (["env.agents.agent.eyes.fov=[180,10]"], r"eyes\.fov=.*\(0, 180\)"),
    (["env.agents.agent.eyes.num_eyes=[2,3]", "env.render.max_eyes=4"], r"6 eyes.*max_eyes=4"),
    (["env.agents.agent.eyes.resolution=[20,20]", "env.render.max_resolution=16"], r"max_resolution=16"),
    (["env.mazes.OPEN.map='[[1, 0], [1, Z]]'"], r"unknown cell 'Z' at row 1, col 1"),
    (["env.mazes.OPEN.agent_id_map={default: [agent], O: [goal]}"], r"no spawn cell for agent 'adversary'"),
    (["env.agents.goal.texture=diagonal_3"], r"texture.*unknown texture 'diagonal_3'"),
    (["env.task.rewards.goal.fn=teleport"], r"rewards\.goal\.fn='teleport'; valid"),
    (["env.task.rewards.goal.target=agent"], r"target 'agent' is not an object"),
    (["+env.task.rewards.goal.bogus=1"], r"unknown argument\(s\) \['bogus'\]"),
    (["env.frame_skip=0"], r"frame_skip=0 must be a positive int"),
    (["env.maze_selection=sometimes"], r"maze_selection='sometimes'; valid"),
    (["env.nonexistent_key=1"], r"nonexistent_key"),
    (["env.agents.agent.eyes.optics.aperture=1.5"], r"eyes\.optics\.aperture=1\.5 must be a number in \[0, 1\]"),
    (["env.agents.agent.eyes.optics.psf_size=4"], r"optics\.psf_size=4 must be an odd integer"),
    (["env.agents.agent.eyes.optics.wavelengths=[610,530]"], r"optics\.wavelengths=.*three wavelengths in nm"),
    (["env.agents.agent.eyes.optics.mask=[[1,2]]"], r"optics\.mask=.*rows of 0/1"),
    (["+env.agents.agent.eyes.optics.focus=1"], r"optics: unknown key\(s\) \['focus'\]; valid"),
    (["env.agents.agent.eyes.optics.refractive_index=1"], r"optics\.refractive_index=1 must be a number > 1"),
    (["env.agents.agent.eyes.optics.enabled=true", "env.render.max_pixels=100"],
     r"eyes\.optics\.enabled=true needs the image buffer layout.*render\.max_pixels=100"),
])
def test_bad_values_fail_at_load_time_naming_key_and_valid(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("detection", overrides)


def test_unknown_exp():
    with pytest.raises(ConfigError, match=r"unknown exp 'flying'; valid: \[.*'detection'.*'navigation'.*'quick'\]"):
        load_config("flying")
