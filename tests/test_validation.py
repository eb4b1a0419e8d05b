"""Every config value is checked at load: a ConfigError naming the key, the value and what is valid;
the commands print it as one line and exit with code 2."""

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from aci_jax import ConfigError, load_config
from aci_jax import config as config_mod
from aci_jax.config import available, validate

A, G = "env.agents.agent", "env.agents.goal"
BAD = [  # (overrides, the key the error must name)
    (["seed=abc"], "seed='abc'"),
    (["seed=-1"], "seed=-1"),
    (["seed=1.5"], "seed=1.5"),
    # trainer
    (["trainer.mode=train"], "trainer.mode='train'"),
    (["trainer.total_timesteps=-5"], "trainer.total_timesteps=-5"),
    (["trainer.n_steps=0"], "trainer.n_steps=0"),
    (["trainer.n_minibatches=0"], "trainer.n_minibatches=0"),
    (["trainer.n_minibatches=7"], "trainer.n_minibatches=7 must be a divisor"),
    (["trainer.n_epochs=0"], "trainer.n_epochs=0"),
    (["trainer.learning_rate=-1e-3"], "trainer.learning_rate=-0.001"),
    (["trainer.learning_rate=nan"], "trainer.learning_rate=nan"),
    (["trainer.lr_schedule=cosine"], "trainer.lr_schedule='cosine'"),
    (["trainer.gamma=1.5"], "trainer.gamma=1.5"),
    (["trainer.gae_lambda=-0.1"], "trainer.gae_lambda=-0.1"),
    (["trainer.clip_range=0"], "trainer.clip_range=0"),
    (["trainer.clip_range_vf=-1"], "trainer.clip_range_vf=-1"),
    (["trainer.ent_coef=-0.01"], "trainer.ent_coef=-0.01"),
    (["trainer.vf_coef=abc"], "trainer.vf_coef='abc'"),
    (["trainer.max_grad_norm=0"], "trainer.max_grad_norm=0"),
    (["trainer.normalize_advantage=maybe"], "trainer.normalize_advantage='maybe'"),
    (["+trainer.bogus=1"], "unknown trainer key(s) ['bogus']"),
    (["trainer.network.encoder=rnn"], "trainer.network.encoder='rnn'"),
    (["trainer.network.features=0"], "trainer.network.features=0"),
    (["trainer.network.channels=[16,-1]"], "trainer.network.channels=[16, -1]"),
    (["trainer.network.hidden=64"], "trainer.network.hidden=64"),
    (["trainer.network.log_std_init=x"], "trainer.network.log_std_init='x'"),
    (["trainer.network.share_encoder=2"], "trainer.network.share_encoder=2"),
    (["trainer.network.normalize_observations=yes"], "trainer.network.normalize_observations='yes'"),
    (["+trainer.network.bogus=1"], "unknown trainer.network key(s) ['bogus']"),
    # train
    (["train.checkpoint_every=0"], "train.checkpoint_every=0"),
    (["train.max_to_keep=0"], "train.max_to_keep=0"),
    (["train.eval_every=-1"], "train.eval_every=-1"),
    (["train.eval_envs=-3"], "train.eval_envs=-3"),
    (["train.early_stop=0"], "train.early_stop=0"),
    # rollout
    (["rollout.n_envs=0"], "rollout.n_envs=0"),
    (["rollout.n_steps=-1"], "rollout.n_steps=-1"),
    (["rollout.policy=foo"], "rollout.policy='foo'"),
    (["rollout.video_env=-1"], "rollout.video_env=-1"),
    (["rollout.video_env=5", "rollout.n_envs=2"], "rollout.video_env=5"),
    (["rollout.fps=0"], "rollout.fps=0"),
    (["rollout.view_size=0"], "rollout.view_size=0"),
    (["rollout.apertures=[0]"], "rollout.apertures=[0]"),
    (["rollout.apertures=[0.5]"], "rollout.apertures=[0.5] needs the optics eye"),
    # eval
    (["eval.params=worst"], "eval.params='worst'"),
    (["eval.viewer=sometimes"], "eval.viewer='sometimes'"),
    # env
    (["env.physics_dt=0"], "env.physics_dt=0"),
    (["env.frame_skip=0"], "env.frame_skip=0"),
    (["env.max_episode_steps=2.5"], "env.max_episode_steps=2.5"),
    (["env.frame_stack=0"], "env.frame_stack=0"),
    (["env.n_envs=0"], "env.n_envs=0"),
    (["env.maze_selection=sometimes"], "env.maze_selection='sometimes'"),
    (["env.spawn_jitter=-0.5"], "env.spawn_jitter=-0.5"),
    (["+eval_env.spawn_jitter=-0.5"], "eval_env.spawn_jitter=-0.5"),
    (["env.max_geom_pairs=0"], "env.max_geom_pairs=0"),
    (["env.max_contact_points=0"], "env.max_contact_points=0"),
    (["env.solver_iterations=0"], "env.solver_iterations=0"),
    (["env.ls_iterations=-1"], "env.ls_iterations=-1"),
    (["env.render.supersample=0"], "env.render.supersample=0"),
    (["env.render.background=[0,0]"], "env.render.background=[0, 0]"),
    (["env.render.max_eyes=0"], "env.render.max_eyes=0"),
    (["env.render.max_resolution=-2"], "env.render.max_resolution=-2"),
    (["env.render.view_size=0"], "env.render.view_size=0"),
    # agents and eyes
    ([f"{A}.kind=plane"], f"{A}.kind='plane'"),
    ([f"{A}.radius=0"], f"{A}.radius=0"),
    ([f"{A}.trainable=1"], f"{A}.trainable=1"),
    ([f"{A}.mass=0"], f"{A}.mass=0"),
    ([f"{A}.kv=-1"], f"{A}.kv=-1"),
    ([f"{A}.max_speed=0"], f"{A}.max_speed=0"),
    ([f"{A}.speed=0"], f"{A}.speed=0"),
    ([f"{A}.heading=sideways"], f"{A}.heading='sideways'"),
    ([f"{A}.max_turn=0"], f"{A}.max_turn=0"),
    ([f"{A}.yaw_kp=0"], f"{A}.yaw_kp=0"),
    ([f"{A}.yaw_kv=-1"], f"{A}.yaw_kv=-1"),
    ([f"{A}.init_yaw=north"], f"{A}.init_yaw='north'"),
    ([f"{G}.radius=-1"], f"{G}.radius=-1"),
    ([f"+{G}.emission=-1"], f"{G}.emission=-1"),
    ([f"{G}.turned=3"], f"{G}.turned=3"),
    ([f"{A}.eyes.fov=0"], f"{A}.eyes.fov=0"),
    ([f"{A}.eyes.resolution=[a,2]"], f"{A}.eyes.resolution=['a', 2]"),
    ([f"{A}.eyes.resolution=[1.5,2]"], f"{A}.eyes.resolution=[1.5, 2]"),
    ([f"{A}.eyes.num_eyes=[1]"], f"{A}.eyes.num_eyes=[1]"),
    ([f"{A}.eyes.lat_range=[10,-10]"], f"{A}.eyes.lat_range=[10, -10]"),
    ([f"{A}.eyes.lon_range=[0,200]"], f"{A}.eyes.lon_range=[0, 200]"),
    (["env.render.max_pixels=0"], "env.render.max_pixels=0"),
    (["env.render.max_width=-2"], "env.render.max_width=-2"),
    (["env.render.max_height=1.5"], "env.render.max_height=1.5"),
    # evo: numbers, then genes, initial conditions, constraints and strategy
    (["evo.population_size=0"], "evo.population_size=0"),
    (["evo.num_generations=-1"], "evo.num_generations=-1"),
    (["evo.sigma=0"], "evo.sigma=0"),
    (["evo.warm_start=1.5"], "evo.warm_start=1.5"),
    (["evo.infeasible=ignore"], "evo.infeasible='ignore'"),
    (["evo.max_resamples=-1"], "evo.max_resamples=-1"),
    (["evo.penalty_fitness=abc"], "evo.penalty_fitness='abc'"),
    (["evo.sub_batch=0"], "evo.sub_batch=0"),
    (["evo.checkpoint_every=0"], "evo.checkpoint_every=0"),
    (["evo.devices=0"], "evo.devices=0"),
    (["evo.devices=gpu"], "evo.devices='gpu'"),
    (["train.seeds=0"], "train.seeds=0"),
    (["train.final_eval_envs=-1"], "train.final_eval_envs=-1"),
    (["eval.seed=-1"], "eval.seed=-1"),
    (["evo.population_size=1"], "evo.population_size=1 is too small for evo.strategy='cma_es'"),
    (["evo.strategy=sep_cma_es", "evo.population_size=1"], "evo.population_size=1 is too small"),
    (["evo.devices=99"], "evo.devices=99: only 1 local device(s)"),
    (["evo.constraints.pixels.budget=abc"], "evo.constraints.pixels: its arguments"),
    (["evo.constraints.pixels.budget=0"], "evo.constraints.pixels.budget=0 must be a positive number"),
    (["evo.constraints.memory.budget=-3"], "evo.constraints.memory.budget=-3 must be a positive number"),
    (["+evo.strategy_params.std_init=abc"], "evo.strategy_params.std_init='abc' must be a number"),
    (["evo.constraints=hello"], "evo.constraints='hello' must be a mapping"),
    (["evo.fitness=best"], "evo.fitness='best'"),
    (["train.final_eval_envs=0"], "evo.fitness=final tells the strategy the final evaluation's fitness"),
    (["env.physics_impl=cuda"], "env.physics_impl='cuda'; valid: ['jax', 'warp'] or null (jax)"),
    (["env.physics_impl=warp"], "env.physics_impl='warp' needs a CUDA device"),
    (["allow_cpu=maybe"], "allow_cpu='maybe' must be true or false"),
    (["evo.strategy=nevergrad"], "evo.strategy='nevergrad'"),
    (["evo.strategy=open_es", "evo.population_size=3"], "evo.population_size=3"),
    (["+evo.strategy_params.bogus=1"], "evo.strategy_params: unknown field(s) ['bogus']"),
    (["evo.evolve=[eyes]"], "evo.evolve names unknown gene 'eyes'"),
    (["evo.genes.width.fields=[resolution.2]"], "evo.genes.width.fields: unknown field 'resolution.2'"),
    (["evo.genes.width.low=9", "evo.genes.width.high=3"], "evo.genes.width: low=9.0 > high=3.0"),
    (["evo.genes.width.low=4"], "evo.genes.width: initial value 1.0"),
    (["evo.genes.width.type=float"], "evo.genes.width.type='float'"),
    (["evo.genes.fov_x.type=int"], "evo.genes.fov_x.type='int' does not fit"),
    (["evo.init=camera"], "evo.init='camera'"),
    (["evo.constraints.pixels.fn=budget"], "evo.constraints.pixels.fn='budget'"),
    (["+evo.constraints.pixels.limit=3"], "evo.constraints.pixels: unknown argument(s) ['limit']"),
]


@pytest.mark.parametrize("overrides, key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_each_key_with_a_bad_value_is_a_config_error_naming_it(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config("detection", overrides)
    assert key in str(e.value)
    assert any(w in str(e.value) for w in ("must", "need", "valid", "unknown"))  # and what is valid


def test_every_table_key_has_a_bad_value_case():
    tables = {"": config_mod.SEED, "trainer": config_mod.TRAINER, "trainer.network": config_mod.NETWORK,
              "train": config_mod.TRAIN, "rollout": config_mod.ROLLOUT, "eval": config_mod.EVAL,
              "env": config_mod.ENV, "env.render": config_mod.RENDER, A: config_mod.POINT_AGENT,
              G: config_mod.OBJECT_AGENT, "evo": config_mod.EVO}
    covered = " ".join(k for _, k in BAD)
    missing = [f"{w}.{k}".lstrip(".") for w, t in tables.items() for k, _ in t if f"{w}.{k}=".lstrip(".") not in covered]
    assert not missing


def test_encoder_choices_match_the_network():
    from aci_jax.rl.networks import ENCODERS

    rule = dict(config_mod.NETWORK)["encoder"]
    assert all(rule.ok(e) for e in ENCODERS) and str(list(ENCODERS)) in rule.tail


@pytest.mark.parametrize("exp", available("exp"))
def test_every_exp_loads_with_defaults(exp):
    cfg = load_config(exp)
    assert cfg.expname == exp


def test_missing_optional_keys_of_an_older_run_config_use_defaults():
    cfg = OmegaConf.to_container(load_config("detection"))
    for section, key in (("env", "spawn_jitter"), ("env", "max_geom_pairs"), ("env", "solver_iterations"),
                         ("train", "eval_envs"), ("trainer", "clip_range_vf")):
        del cfg[section][key]
    del cfg["env"]["render"]["view_size"], cfg["rollout"], cfg["eval"], cfg["trainer"]["network"]
    old = OmegaConf.create(cfg)
    validate(old)  # accepted, and the code reads the defaults of what is missing:
    from aci_jax.rl.networks import NetworkConfig
    from aci_jax.rl.ppo import PPOConfig

    ppo = PPOConfig.from_config(old.trainer)
    assert ppo.clip_range_vf is None and ppo.network == NetworkConfig()
    assert int(old.train.get("eval_envs") or old.env.n_envs) == old.env.n_envs


def _command(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                             "PYTHONPATH": os.pathsep.join(filter(None, [
                                                 os.path.dirname(os.path.dirname(config_mod.__file__)),
                                                 os.environ.get("PYTHONPATH")]))})


@pytest.mark.parametrize("args, message", [
    (["aci_jax.train", "exp=detection", "trainer.n_steps=0"], "trainer.n_steps=0 must be a positive int"),
    (["aci_jax.rollout", "exp=detection", "rollout.policy=foo"], "rollout.policy='foo'; valid"),
    (["aci_jax.eval", "run_dir=nonexistent"], "holds no config.yaml"),
])
def test_commands_print_one_line_and_exit_2(args, message, tmp_path):
    if args[0] != "aci_jax.eval":
        args = [*args, f"run_dir={tmp_path / 'run'}"]
    proc = _command(*args, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("config error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "run").exists()  # Hydra's folder, made before the error, is removed
