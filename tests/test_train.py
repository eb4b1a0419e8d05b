"""Training runs: resume equals an uninterrupted run, clear errors, NaN stop, fitness as ACI,
periodic evaluation with best parameters and early stop, the eval command, test mode."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

import aci_jax
from aci_jax.config import ConfigError
from aci_jax.rl import checkpoint
from aci_jax import eval as eval_cmd
from aci_jax.eyes.geometry import EyeParams
from aci_jax.rl.fitness import TEST_OPTIMUM, fitness, remove_outliers, synthetic_fitness
from aci_jax.train import TrainingDiverged, train_run

# 3 iterations of 4 envs x 8 steps; 2x2 eye, short episodes; evaluation after every iteration.
TINY = ["env.agents.agent.eyes.resolution=[2,2]", "env.render.supersample=1", "env.n_envs=4",
        "env.max_episode_steps=16", "env.frame_stack=2", "trainer.n_steps=8", "trainer.n_minibatches=2",
        "trainer.n_epochs=1", "trainer.total_timesteps=96", "train.checkpoint_every=1", "train.eval_every=1",
        "train.eval_envs=4", "train.final_eval_envs=8", "env.render.view_size=32"]


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
    evals = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in evals] == [32, 64, 96]
    assert all(0 <= r["success_rate"] <= 1 and 0 <= r["failure_rate"] <= 1 for r in evals)
    best = max(evals, key=lambda r: r["mean_return"])  # the first of equals
    assert checkpoint.manager(run_dir / "best").all_steps() == [best["env_steps"]]
    fit = json.loads((run_dir / "fitness.json").read_text())
    assert fit["params"] == "best" and fit["env_steps"] == best["env_steps"]
    assert fit["evaluation"] == "final" and fit["episodes"] == 8  # 2 fresh rounds of the 4 eval envs
    assert fit["fitness"] == result["fitness"]  # recomputed from restored parameters: the eval command's test
    # the selection evaluation replays the best evaluation's episodes (the same start states every time)
    assert fit["selection"]["mean_return"] == pytest.approx(best["mean_return"])
    assert np.shape(fit["returns"]) == (8, 1)  # 8 final eval envs x 1 maze
    for name in ("config.yaml", "plots/learning_curve.png", f"videos/best_{best['env_steps']}_OPEN.mp4"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert checkpoint.manager(run_dir / "checkpoints").all_steps() == [32, 64, 96]  # max_to_keep 3


def test_eval_command_writes_report_summary_and_videos(full_run):
    run_dir, _ = full_run
    fit = json.loads((run_dir / "fitness.json").read_text())
    best = eval_cmd.main([f"run_dir={run_dir}"])
    # the eval command restores best/ and replays the final evaluation's fresh episodes in its own
    # program: the same returns, and ACI's fitness of them is the fitness the run recorded
    assert best["params"] == "best" and best["returns"] == fit["returns"]
    assert best["fitness"] == pytest.approx(fit["fitness"]) and fit["fitness"] == pytest.approx(fitness(best["returns"]))
    last = eval_cmd.main([f"run_dir={run_dir}", "eval.params=last"])
    assert last["params"] == "last" and last["env_steps"] == 96
    assert json.loads((run_dir / "eval.json").read_text())["params"] == "last"
    assert "last parameters from env step 96" in (run_dir / "eval_summary.txt").read_text()
    assert (run_dir / "videos/last_96_OPEN.mp4").stat().st_size > 0
    cfg, _ = eval_cmd.load_run_config([f"run_dir={run_dir}", "+eval_env.spawn_jitter=0.5", "train.eval_envs=8"])
    assert cfg.eval_env.spawn_jitter == 0.5 and cfg.train.eval_envs == 8


@pytest.mark.parametrize("argv, message", [([], "run_dir=... is required"),
                                           (["run_dir=/nowhere"], "no config.yaml"),
                                           (["eval.params=worst"], "eval.params='worst'; valid"),
                                           (["eval_env.spawn_jiter=0.5"], "eval_env.spawn_jiter: no such key")])
def test_eval_command_errors(full_run, argv, message, capsys):
    if argv and argv[0].startswith("eval"):
        argv = [f"run_dir={full_run[0]}", *argv]
    with pytest.raises(SystemExit) as e:
        eval_cmd.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_early_stop_after_evaluations_without_improvement(monkeypatch, tmp_path, capsys):
    """Evaluations that only get worse (a spy lowers each one's returns by 1000 more than the last;
    the programs are full_run's, so nothing new compiles): patience 1 stops after the 2nd of 3."""
    import dataclasses

    import aci_jax.train as train_mod
    from aci_jax.rl.built import build

    b = build(_cfg())
    calls = []

    def worse(p, e, k):
        out = dict(b.evaluate(p, e, k))
        calls.append(1)
        return {**out, "return": out["return"] - 1000.0 * len(calls)}

    monkeypatch.setattr(train_mod, "build", lambda c: dataclasses.replace(b, evaluate=worse))
    result = train_run(_cfg("train.early_stop=1"), tmp_path)
    assert result["iterations"] == 2 and result["fitness"] is not None
    assert "early stop: 1 evaluations without improvement" in capsys.readouterr().out
    assert len((tmp_path / "evaluations.jsonl").read_text().splitlines()) == 2
    assert train_run(_cfg("train.early_stop=1"), tmp_path)["iterations"] == 0  # finished: stays stopped


def test_test_mode_gives_synthetic_fitness_without_training(tmp_path):
    result = train_run(_cfg("trainer.mode=test"), tmp_path)
    eyes = EyeParams.from_config(_cfg().env.agents.agent.eyes)
    assert result["fitness"] == pytest.approx(float(synthetic_fitness(eyes)))
    assert json.loads((tmp_path / "fitness.json").read_text())["mode"] == "test"
    assert not (tmp_path / "checkpoints").exists()
    best = eyes.replace(**{k: np.array(v) for k, v in TEST_OPTIMUM.items()})
    assert float(synthetic_fitness(best)) == 0.0 > result["fitness"]
    with pytest.raises(ConfigError, match="trainer.mode='train'; valid"):
        _cfg("trainer.mode=train")


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
    with pytest.raises(ConfigError, match=f"model_path.*{full_run[0].name}.*not a compatible checkpoint"):
        train_run(other, tmp_path / "b")


def test_killed_mid_run_resumes_from_last_good_checkpoint(full_run, tmp_path, capsys):
    """SIGKILL a training process once it has written a checkpoint; the same command resumes and
    reaches the uninterrupted run's parameters, with logs reading as one run."""
    args = [sys.executable, "-m", "aci_jax.train", "exp=detection", f"run_dir={tmp_path}", *TINY]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(aci_jax.__file__)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": repo}  # this checkout's aci_jax
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=repo)
    try:
        while checkpoint.manager(tmp_path / "checkpoints").latest_step() is None and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = train_run(_cfg(), tmp_path)
    assert "resuming from step" in capsys.readouterr().out
    assert int(resumed["state"].env_steps) == 96
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 full_run[1]["state"].params, resumed["state"].params)
    for name in ("metrics.jsonl", "evaluations.jsonl"):
        rows = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert [r["env_steps"] for r in rows] == [32, 64, 96]


def test_nan_stops_without_saving(tmp_path):
    cfg = _cfg()
    OmegaConf.update(cfg, "trainer.learning_rate", float("nan"))  # load_config rejects it; train_run takes it
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        train_run(cfg, tmp_path)
    assert checkpoint.manager(tmp_path / "checkpoints").latest_step() is None


def test_final_evaluation_plays_episodes_no_selection_evaluation_played(monkeypatch, tmp_path):
    """Every key the final evaluation resets its envs with differs from every key a periodic
    (selection) evaluation used, and so do the episodes' start states: a spy on the compiled
    evaluation records the keys of a whole training run (3 selection evaluations, then the report)."""
    import dataclasses

    import aci_jax.train as train_mod
    from aci_jax.rl.built import build
    from aci_jax.rl.evaluation import final_keys, selection_key

    cfg = _cfg("seed=5")
    b = build(cfg)
    calls = []
    spy = dataclasses.replace(b, evaluate=lambda p, e, k: calls.append(np.asarray(jax.random.key_data(k))
                                                                       if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
                                                                       else np.asarray(k)) or b.evaluate(p, e, k))
    monkeypatch.setattr(train_mod, "build", lambda c: spy)
    train_run(cfg, tmp_path)
    sel, fin = np.asarray(selection_key(5)), np.asarray(final_keys(5, b.final_rounds))
    assert b.final_rounds == 2 and len(calls) == 3 + 1 + 2  # 3 periodic, the report's selection, 2 rounds
    assert all((c == sel).all() for c in calls[:4]) and np.array_equal(np.stack(calls[4:]), fin)
    # the envs' reset keys (evaluate splits its key over its envs) and their start states: disjoint
    reset = lambda k: np.asarray(jax.random.split(k, 4))
    sel_keys = {tuple(r) for r in reset(selection_key(5))}
    fin_keys = {tuple(r) for k in final_keys(5, 2) for r in reset(k)}
    assert len(fin_keys) == 8 and not sel_keys & fin_keys
    start = lambda keys: {tuple(np.round(np.asarray(b.eval_env.reset(jnp.asarray(k, jnp.uint32), b.ppo.env.default_eyes)
                                                    .pipeline_state.qpos), 4)) for k in keys}
    assert not start(sel_keys) & start(fin_keys)


def test_summarize_reports_each_maze_when_there_are_several():
    from aci_jax.rl.evaluation import summarize

    results = {"return": np.array([[1.0, 10.0], [3.0, 20.0]]), "success": np.array([[0.0, 1.0], [1.0, 1.0]]),
               "failure": np.zeros((2, 2))}
    s = summarize(results, ["SMALL", "LARGE"])
    assert s["mean_return"] == 8.5 and s["success_rate"] == 0.75 and s["episodes"] == 4
    assert s["mean_return/SMALL"] == 2.0 and s["mean_return/LARGE"] == 15.0
    assert s["success_rate/SMALL"] == 0.5 and s["success_rate/LARGE"] == 1.0
    assert not any("/" in k for k in summarize(results, ["ONLY"]))


def test_seeds_train_as_one_program_each_equal_to_its_solo_run(full_run, tmp_path, capsys):
    # Over 60 s (~5 min): the seeds program (vmapped over seeds) and the eval command's seeds
    # evaluation with its videos compile here; resume and eval are checked on the same folder to pay once.
    """train.seeds=2: seeds 0 and 1 as rows of one vmapped program; seed 0 gets the fitness of its
    solo run (full_run); killed after one segment, the same command resumes to the same records."""
    from aci_jax.seeds import train_seeds

    cfg = _cfg("train.seeds=2")
    first = train_seeds(cfg, tmp_path, stop_after=1)
    assert first["summary"] is None and first["segments"] == 1
    out = train_seeds(cfg, tmp_path)
    assert "resuming after segment 1/3" in capsys.readouterr().out and out["segments"] == 2
    rows = [json.loads(x) for x in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    assert [r["segment"] for r in rows] == [1, 2, 3] and [r["env_steps"] for r in rows] == [32, 64, 96]
    assert all(len(r["eval_success"]) == 2 for r in rows)
    table = list(csv.DictReader(open(tmp_path / "seeds.csv")))
    assert [int(r["seed"]) for r in table] == [0, 1]
    assert float(table[0]["fitness"]) == pytest.approx(full_run[1]["fitness"], rel=1e-4, abs=1e-4)
    summary = json.loads((tmp_path / "summary.json").read_text())
    fits = [float(r["fitness"]) for r in table]
    assert summary["fitness"]["n"] == 2 and summary["fitness"]["median"] == pytest.approx(np.median(fits))
    assert summary["fitness"]["min"] == pytest.approx(min(fits)) and summary["success"]["n"] == 2
    assert summary["evaluation"] == "final" and summary["selection_success"]["n"] == 2
    assert (tmp_path / "plots" / "seeds.png").stat().st_size > 0 and list((tmp_path / "videos").glob("*.mp4"))
    # the eval command on a seeds folder: every seed's best parameters (stacked in best/), or one
    ev = eval_cmd.main([f"run_dir={tmp_path}"])
    assert sorted(ev["seeds"]) == [0, 1] and ev["summary"]["fitness"]["n"] == 2
    assert ev["seeds"][0]["fitness"] == pytest.approx(float(table[0]["fitness"]), rel=1e-4, abs=1e-4)
    assert list(eval_cmd.main([f"run_dir={tmp_path}", "eval.seed=1"])["seeds"]) == [1]
    assert (tmp_path / "eval_seed1.json").is_file()
