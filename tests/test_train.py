"""Training runs: resume equals an uninterrupted run, clear errors, NaN stop, fitness as ACI."""

import json

import jax
import numpy as np
import pytest

import aci_jax
from aci_jax.config import ConfigError
from aci_jax.rl import checkpoint
from aci_jax.rl.fitness import fitness, remove_outliers
from aci_jax.train import TrainingDiverged, train_run

# 3 iterations of 4 envs x 8 steps; 2x2 eye, short episodes.
TINY = ["env.agents.agent.eyes.resolution=[2,2]", "env.render.supersample=1", "env.n_envs=4",
        "env.max_episode_steps=16", "env.frame_stack=2", "trainer.n_steps=8", "trainer.n_minibatches=2",
        "trainer.n_epochs=1", "trainer.total_timesteps=96", "train.checkpoint_every=1"]


def _cfg(*extra):
    return aci_jax.load_config("detection", [*TINY, *extra])


def test_fitness_drops_outliers_then_median_of_top_quarter():
    r = [1, 2, 3, 4, 5, 6, 7, 8, 100]  # Q1 3, Q3 7: 100 is beyond 7 + 1.5*4
    assert sorted(remove_outliers(r)) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert fitness(r) == 7.5  # top 25 % of 1..8: 7, 8
    assert fitness([[2.0, np.nan], [2.0, 2.0]]) == 2.0
    assert fitness([-5, -4, -3, -2]) == -2.0
    assert fitness([]) == float("-inf")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    return run_dir, train_run(_cfg(), run_dir)


def test_run_folder(full_run):
    run_dir, result = full_run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [32, 64, 96]
    assert {"env_steps_per_s", "episode_return", "episode_success", "policy_loss", "entropy"} <= set(rows[0])
    fit = json.loads((run_dir / "fitness.json").read_text())
    assert fit["fitness"] == result["fitness"] == fitness(fit["returns"])
    assert np.shape(fit["returns"]) == (4, 1)  # 4 eval envs x 1 maze
    for name in ("config.yaml", "plots/learning_curve.png"):
        assert (run_dir / name).is_file()
    assert checkpoint.manager(run_dir / "checkpoints").all_steps() == [32, 64, 96]  # max_to_keep 3


def test_interrupted_and_resumed_equals_uninterrupted(full_run, tmp_path, capsys):
    _, full = full_run
    cfg = _cfg()
    first = train_run(cfg, tmp_path, stop_after=1)
    assert first["iterations"] == 1 and first["fitness"] is None
    resumed = train_run(cfg, tmp_path)
    assert "resuming from step 32" in capsys.readouterr().out
    assert resumed["iterations"] == 2 and int(resumed["state"].env_steps) == 96
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 full["state"].params, resumed["state"].params)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_model_path_missing_or_incompatible(full_run, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="nowhere.*does not exist"):
        train_run(_cfg(f"train.model_path={missing}"), tmp_path / "a")
    other = _cfg(f"train.model_path={full_run[0]}", "trainer.network.features=8")
    with pytest.raises(ConfigError, match=f"{full_run[0].name}.*not a compatible checkpoint"):
        train_run(other, tmp_path / "b")


def test_nan_stops_without_saving(tmp_path):
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        train_run(_cfg("trainer.learning_rate=nan"), tmp_path)
    assert checkpoint.manager(tmp_path / "checkpoints").latest_step() is None
