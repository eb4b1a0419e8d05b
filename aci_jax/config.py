"""Hydra config composition and validation: bad input fails here, naming the key and what is valid."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from aci_jax.world.maze import MazeError, maze_from_config
from aci_jax.world.textures import validate_texture_name

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
HEADINGS = ("absolute", "relative")
AGENT_KINDS = ("point", "object")
POLICIES = ("random", "nearest_object")  # rollout.policy


class ConfigError(ValueError):
    """A config value that aci_jax cannot run with."""


# -- rules: what a value must be, and how the error says so ------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    tail: str  # appended to `key=value` in the error: " must be ..." or "; valid: [...]"


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:  # YAML/Hydra give 1e6 as a float: integral floats count
    return _is_num(v) and float(v).is_integer()


def count(lo: int = 1) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= lo, " must be a positive int" if lo == 1 else f" must be an int >= {lo}")


def number(lo: float | None = None, hi: float | None = None, strict: bool = False) -> Rule:
    """A finite number in [lo, hi] ((lo, hi] when strict)."""
    what = ("a positive number" if (lo, hi, strict) == (0, None, True) else
            "a number >= 0" if (lo, hi, strict) == (0, None, False) else
            f"a number in {'(' if strict else '['}{lo}, {hi}]" if lo is not None and hi is not None else "a number")
    return Rule(lambda v: _is_num(v) and (lo is None or (v > lo if strict else v >= lo)) and (hi is None or v <= hi),
                f" must be {what}")


def choice(*valid) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in valid, f"; valid: {list(valid)}")


def ints(lo: int = 1) -> Rule:
    return Rule(lambda v: isinstance(v, (list, tuple, ListConfig)) and all(_is_int(x) and x >= lo for x in v),
                f" must be a list of ints >= {lo}")


def nullable(rule: Rule, meaning: str) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.tail} or null ({meaning})")


BOOL = Rule(lambda v: isinstance(v, bool), " must be true or false")
RGB = Rule(lambda v: isinstance(v, (list, tuple, ListConfig)) and len(v) == 3 and all(_is_num(x) and 0 <= x <= 1 for x in v),
           " must be 3 numbers in [0, 1]")
RATE, POSITIVE, UNIT = number(0), number(0, strict=True), number(0, 1)

# (key, rule) per section. Keys absent from a config (an older run's) are not checked: the code uses
# their defaults; `required` keys must be present.
SEED = (("seed", count(0)), ("allow_cpu", BOOL))
TRAINER = (
    ("mode", choice("ppo", "test")), ("total_timesteps", count()), ("n_steps", count()),
    ("n_minibatches", count()), ("n_epochs", count()), ("learning_rate", RATE),
    ("lr_schedule", choice("constant", "linear")), ("gamma", UNIT), ("gae_lambda", UNIT),
    ("clip_range", POSITIVE), ("clip_range_vf", nullable(POSITIVE, "no value clipping")),
    ("ent_coef", RATE), ("vf_coef", RATE), ("max_grad_norm", POSITIVE), ("normalize_advantage", BOOL),
)
NETWORK = (  # encoder choices: aci_jax.rl.networks.ENCODERS (a test checks they agree)
    ("encoder", choice("mlp", "cnn", "flatten")), ("features", count()), ("channels", ints()),
    ("hidden", ints()), ("log_std_init", number()), ("share_encoder", BOOL), ("normalize_observations", BOOL),
)
TRAIN = (
    ("checkpoint_every", count()), ("max_to_keep", count()), ("eval_every", count(0)),
    ("eval_envs", nullable(count(), "env.n_envs")), ("early_stop", nullable(count(), "no early stop")),
    ("seeds", count()), ("final_eval_envs", count(0)),
)
ROLLOUT = (
    ("n_envs", count()), ("n_steps", count()), ("policy", choice(*POLICIES)), ("video_env", count(0)),
    ("fps", count()), ("view_size", count()),
    ("apertures", nullable(Rule(lambda v: isinstance(v, (list, tuple, ListConfig)) and len(v) > 0
                                and all(_is_num(x) and 0 < x <= 1 for x in v), " must be a list of numbers in (0, 1]"),
                           "one aperture: the eye's own")),
)
EVAL = (("params", choice("best", "last")), ("viewer", BOOL), ("seed", nullable(count(0), "every seed")))
ENV = (
    ("physics_dt", POSITIVE), ("frame_skip", count()), ("max_episode_steps", count()),
    ("frame_stack", count()), ("n_envs", count()), ("maze_selection", choice("cycle", "random")),
    ("spawn_jitter", RATE), ("max_geom_pairs", count()), ("max_contact_points", count()),
    ("solver_iterations", count()), ("ls_iterations", count()), ("physics_impl", nullable(choice("jax", "warp"), "jax")),
)
ENV_REQUIRED = ("physics_dt", "frame_skip", "max_episode_steps", "frame_stack", "n_envs", "maze_selection")
RENDER = (
    ("supersample", count()), ("background", RGB), ("max_eyes", nullable(count(), "the agent's own")),
    ("max_resolution", nullable(count(), "the agent's own")), ("view_size", count()),
    ("max_pixels", nullable(count(), "the image buffer layout")),
    ("max_width", nullable(count(), "render.max_resolution")), ("max_height", nullable(count(), "render.max_resolution")),
)
POINT_AGENT = (
    ("trainable", BOOL), ("mass", POSITIVE), ("kv", POSITIVE), ("max_speed", POSITIVE), ("speed", POSITIVE),
    ("heading", choice(*HEADINGS)), ("max_turn", POSITIVE), ("yaw_kp", POSITIVE), ("yaw_kv", RATE),
    ("init_yaw", nullable(number(), "random at each reset")),
)
OBJECT_AGENT = (("emission", RATE), ("turned", BOOL))  # `mover`: aci_jax.envs.movers.validate_mover
MOVER = (  # env.agents.<object>.mover's values (its fn, arguments and bodies: aci_jax.envs.movers)
    ("speed", Rule(lambda v: _is_num(v) and -1 <= v <= 1, " must be a number in [-1, 1] (the speed action a0)")),
    ("max_speed", POSITIVE), ("threshold", RATE), ("noise", RATE),
)
LIGHTING = (  # env.lighting (aci_jax.world.scene): how the scene is lit
    ("sun", BOOL), ("headlight", BOOL), ("wall_emission", RATE),
)
EVO = (  # strategies: aci_jax.evo.strategy.STRATEGIES (checked when the strategy is built)
    ("population_size", count()), ("num_generations", count()), ("sigma", POSITIVE), ("warm_start", UNIT),
    ("infeasible", choice("resample", "penalty")), ("max_resamples", count(0)), ("penalty_fitness", number()),
    ("sub_batch", nullable(count(), "the whole population")), ("checkpoint_every", count()),
    ("devices", Rule(lambda v: v == "all" or (_is_int(v) and v >= 1), " must be 'all' or a positive int")),
    ("fitness", choice("final", "selection")),
)


_LIST = (list, tuple, ListConfig)


def _is_mask(v) -> bool:
    rows = [list(r) if isinstance(r, _LIST) else None for r in v] if isinstance(v, _LIST) else None
    return (bool(rows) and all(r is not None and r and len(r) == len(rows[0]) for r in rows)
            and all(_is_num(x) and x in (0, 1) for r in rows for x in r))


OPTICS = (  # eyes.optics (aci_jax/eyes/optics.py); null list values: the OpticsConfig defaults
    ("enabled", BOOL), ("aperture", Rule(lambda v: _is_num(v) and 0 <= v <= 1,
                                         " must be a number in [0, 1] (radius fraction of the pupil)")),
    ("lens", BOOL),
    ("height_map", nullable(Rule(lambda v: isinstance(v, _LIST) and len(v) >= 2 and all(_is_num(x) for x in v),
                                 " must be a list of >= 2 heights (m)"), "a thin lens of focal_length")),
    ("mask", nullable(Rule(_is_mask, " must be a rectangular list of rows of 0/1"), "an open pupil")),
    ("focal_length", POSITIVE), ("f_number", POSITIVE),
    ("refractive_index", Rule(lambda v: _is_num(v) and v > 1, " must be a number > 1")),
    ("wavelengths", nullable(Rule(lambda v: isinstance(v, _LIST) and len(v) == 3
                                  and all(_is_num(x) and 100 <= x <= 10000 for x in v),
                                  " must be three wavelengths in nm (R, G, B), each in [100, 10000]"),
                             "610, 530, 470 nm")),
    ("depths", nullable(Rule(lambda v: isinstance(v, _LIST) and len(v) >= 1 and all(_is_num(x) and x > 0 for x in v),
                             " must be a non-empty list of depths > 0 (m)"), "the default depths")),
    ("noise_std", RATE),
    ("psf_size", Rule(lambda v: _is_int(v) and v >= 1 and v % 2 == 1, " must be an odd integer >= 1 (pixels)")),
    ("pupil_samples", count(32)), ("psf_oversample", count()),
    ("height_samples", count(2)),
)


def check(section, where: str, table, required: Sequence[str] = ()) -> None:
    """Check `section`'s keys against `table`; ConfigError naming `where.key`, the value and what is valid."""
    for key, rule in table:
        if key not in section and key not in required:
            continue
        v = section.get(key)
        if not rule.ok(v):
            raise ConfigError(f"{where + '.' if where else ''}{key}={_show(v)}{rule.tail}")


def _show(v) -> str:
    return repr(OmegaConf.to_container(v) if isinstance(v, (ListConfig, DictConfig)) else v)


def available(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def load_config(exp: str = "detection", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `configs/config.yaml` with `exp=<exp>` and Hydra overrides, then validate it."""
    if exp not in available("exp"):
        raise ConfigError(f"unknown exp '{exp}'; valid: {available('exp')}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose("config", overrides=[f"exp={exp}", *overrides])
    except HydraException as e:
        raise ConfigError(f"bad override in {list(overrides)}: {e}") from None
    validate(cfg)
    return cfg


def env_config(cfg: DictConfig, eval: bool = False) -> DictConfig:
    """The env section, or its evaluation variant: `eval_env`'s keys replace env's keys wholesale."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    if eval and cfg.get("eval_env") is not None:
        env.update(OmegaConf.to_container(cfg.eval_env, resolve=True))
    return OmegaConf.create(env)


def validate(cfg: DictConfig, here: bool = True) -> None:
    """Check every config value; raise ConfigError on the first bad one, naming the key, the value and
    what is valid. `here=False` (a launcher on a login node): skip what only the machine that runs
    the command can check (evo.devices against its devices; the command checks it when it starts)."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation pointing nowhere
        raise ConfigError(f"config does not resolve: {e}") from None
    check(cfg, "", SEED, required=("seed",))
    for variant in (False, True):
        env = env_config(cfg, eval=variant)
        where = "eval_env" if variant and "eval_env" in cfg else "env"
        _validate_env(env, where)
        _validate_physics_impl(env, where)
    for name, table in (("train", TRAIN), ("rollout", ROLLOUT), ("eval", EVAL)):
        if cfg.get(name) is not None:
            check(cfg[name], name, table)
    r = cfg.get("rollout")
    if r is not None and r.get("video_env") is not None and r.get("n_envs") is not None and r.video_env >= r.n_envs:
        raise ConfigError(f"rollout.video_env={r.video_env} must be an env of the rollout: valid 0..{r.n_envs - 1} "
                          f"(rollout.n_envs={r.n_envs})")
    if r is not None and r.get("apertures") and not cfg.env.agents.agent.eyes.get("optics", {}).get("enabled", False):
        raise ConfigError(f"rollout.apertures={list(r.apertures)} needs the optics eye: "
                          "env.agents.agent.eyes.optics.enabled=true (e.g. exp=detection_optics)")
    if cfg.get("trainer") is not None:
        _validate_trainer(cfg.trainer, int(cfg.env.n_envs))
    if cfg.get("evo") is not None:
        _validate_evo(cfg, here)


def _validate_evo(cfg: DictConfig, here: bool = True) -> None:
    """The evo section: its numbers, then the genes, initial condition, constraints and strategy
    (ConfigError naming the gene, field or constraint)."""
    check(cfg.evo, "evo", EVO)
    if cfg.evo.get("fitness", "final") == "final" and cfg.get("train") is not None \
            and int(cfg.train.get("final_eval_envs") or 0) == 0:
        raise ConfigError("evo.fitness=final tells the strategy the final evaluation's fitness, and "
                          "train.final_eval_envs=0 turns it off: valid: train.final_eval_envs > 0 (e.g. 128) "
                          "or evo.fitness=selection")
    from aci_jax.evo.genome import genome_from_config  # late: imports jax
    from aci_jax.evo.strategy import Strategy

    try:
        genome = genome_from_config(cfg.evo, cfg.env.agents[trainable_agents(cfg.env)[0]].eyes,
                                    int(cfg.env.frame_stack))
        Strategy(genome, cfg.evo)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name, fn, kw in genome.constraints:  # their arguments, on the initial eyes (before any folder exists)
        try:
            bool(fn(genome.base, **kw))
        except Exception as e:
            raise ConfigError(f"evo.constraints.{name}: its arguments {kw} do not work ({type(e).__name__}: {e}); "
                              f"valid: numbers, e.g. budget: 50") from None
        bad = {k: v for k, v in kw.items() if k in ("budget", "radius", "pixel_size") and
               (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0)}
        if bad:
            k, v = next(iter(bad.items()))
            raise ConfigError(f"evo.constraints.{name}.{k}={v!r} must be a positive number")
    if not here:
        return
    from aci_jax.evo.population import local_devices

    try:
        local_devices(cfg.evo.get("devices", "all"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_trainer(t: DictConfig, n_envs: int) -> None:
    check(t, "trainer", TRAINER)
    if t.get("network") is not None:
        check(t.network, "trainer.network", NETWORK)
    from aci_jax.rl.ppo import PPOConfig  # late: imports jax

    try:  # unknown keys
        c = PPOConfig.from_config(t)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer: {e}") from None
    if (c.n_steps * n_envs) % c.n_minibatches:
        raise ConfigError(f"trainer.n_minibatches={c.n_minibatches} must be a divisor of the rollout batch "
                          f"trainer.n_steps x env.n_envs = {c.n_steps} x {n_envs} = {c.n_steps * n_envs}")


def trainable_agents(env: DictConfig) -> list[str]:
    """Names of an env config's trainable point agents (a valid config has exactly one)."""
    return [n for n, a in env.agents.items() if a.get("kind") == "point" and a.get("trainable", True)]


def _validate_physics_impl(env: DictConfig, where: str) -> None:
    """`physics_impl=warp` needs a CUDA device and MuJoCo Warp (both known only here, late)."""
    if env.get("physics_impl", "jax") != "warp":
        return
    from aci_jax.envs.env import warp_available  # late: imports jax and mjx

    missing = warp_available()
    if missing:
        raise ConfigError(f"{where}.physics_impl='warp' needs {missing}; use {where}.physics_impl=jax (MJX in JAX, "
                          "any device)")


def _validate_env(env: DictConfig, where: str) -> None:
    check(env, where, ENV, required=ENV_REQUIRED)
    check(env.render, f"{where}.render", RENDER, required=("supersample",))
    if env.get("lighting") is not None:
        unknown = sorted(set(env.lighting) - {k for k, _ in LIGHTING})
        if unknown:
            raise ConfigError(f"{where}.lighting: unknown key(s) {unknown}; valid: {[k for k, _ in LIGHTING]}")
        check(env.lighting, f"{where}.lighting", LIGHTING)
    if not env.mazes:
        raise ConfigError(f"{where}.mazes is empty; add one, e.g. 'exp=detection' or a maze config")
    if not env.agents:
        raise ConfigError(f"{where}.agents is empty; add a point agent")
    agents = dict(env.agents)
    trainable = trainable_agents(env)
    for name, a in agents.items():
        if a.get("kind") not in AGENT_KINDS:
            raise ConfigError(f"{where}.agents.{name}.kind={a.get('kind')!r}; valid: {AGENT_KINDS}")
        check(a, f"{where}.agents.{name}", (("radius", POSITIVE),), required=("radius",))
        check(a, f"{where}.agents.{name}", POINT_AGENT if a.kind == "point" else OBJECT_AGENT)
        if a.get("mover") is not None:
            if a.kind != "object":
                raise ConfigError(f"{where}.agents.{name}.mover: only objects (kind: object) can be scripted "
                                  f"movers, '{name}' is kind {a.kind!r}; valid: remove the mover or use kind: object")
            from aci_jax.envs.movers import validate_mover  # late: movers import jax

            validate_mover(a.mover, list(trainable) + [n for n, b in agents.items() if b.get("kind") == "object"],
                           f"{where}.agents.{name}.mover")
            check(a.mover, f"{where}.agents.{name}.mover", MOVER)
        if a.get("texture"):
            try:
                validate_texture_name(a.texture)
            except ValueError as e:
                raise ConfigError(f"{where}.agents.{name}.texture: {e}") from None
    if len(trainable) != 1:
        raise ConfigError(f"{where}.agents: need exactly one trainable point agent, got {trainable}")
    _validate_eyes(agents[trainable[0]].get("eyes"), env.render, f"{where}.agents.{trainable[0]}.eyes",
                   int(env.frame_stack))
    for name, m in env.mazes.items():
        _validate_maze(name, m, agents, f"{where}.mazes.{name}")
    from aci_jax.envs.tasks import validate_task  # late: tasks import jax

    validate_task(env.task, agents, f"{where}.task")


def _validate_eyes(eyes, render, key: str, frame_stack: int) -> None:
    if eyes is None:
        raise ConfigError(f"{key} is missing; e.g. '/eyes@env.agents.agent.eyes: detection'")
    for field in ("num_eyes", "resolution", "fov", "lat_range", "lon_range"):
        v = eyes.get(field)
        if not (isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(_is_num(x) for x in v)):
            raise ConfigError(f"{key}.{field}={_show(v)} must be a pair of numbers")
    for v in eyes.num_eyes:
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{key}.num_eyes={list(eyes.num_eyes)}: counts must be integers >= 1")
    for v in eyes.resolution:
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{key}.resolution={list(eyes.resolution)}: must be integers >= 1")
    for v in eyes.fov:
        if not 0 < v < 180:
            raise ConfigError(f"{key}.fov={list(eyes.fov)}: each must be in (0, 180) degrees")
    for field, lim in (("lat_range", 90), ("lon_range", 180)):
        lo, hi = eyes[field]
        if not -lim <= lo <= hi <= lim:
            raise ConfigError(f"{key}.{field}={[lo, hi]}: need -{lim} <= low <= high <= {lim} degrees")
    n = eyes.num_eyes[0] * eyes.num_eyes[1]
    if render.max_eyes is not None and n > render.max_eyes:
        raise ConfigError(f"{key}.num_eyes={list(eyes.num_eyes)} gives {n} eyes, more than "
                          f"render.max_eyes={render.max_eyes}; valid: at most {render.max_eyes}")
    for i, side in ((0, "width"), (1, "height")):
        name = f"max_{side}" if render.get(f"max_{side}") is not None else "max_resolution"
        limit = render.get(name)
        if limit is not None and eyes.resolution[i] > limit:
            raise ConfigError(f"{key}.resolution={list(eyes.resolution)} does not fit the buffer "
                              f"render.{name}={limit}; valid: {side} <= {limit}")
    pixels = n * eyes.resolution[0] * eyes.resolution[1]
    if render.get("max_pixels") is not None and pixels > render.max_pixels:
        raise ConfigError(f"{key}: num_eyes={list(eyes.num_eyes)} of resolution={list(eyes.resolution)} "
                          f"are {pixels} pixels, more than render.max_pixels={render.max_pixels}; valid: "
                          f"n_lat·n_lon·width·height <= {render.max_pixels}")
    for gene, hi in (("frame_stack", frame_stack), ("policy_width", None)):  # optional genes
        v = eyes.get(gene)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi and v > hi)):
            raise ConfigError(f"{key}.{gene}={v!r} must be null or an integer >= 1"
                              + (f" and <= env.frame_stack={hi}" if hi else ""))
    o = eyes.get("optics")
    if o is not None:
        _validate_optics(o, f"{key}.optics")
        if o.get("enabled", False) and render.get("max_pixels") is not None:
            # The optics eye convolves each eye's image with its PSF: it needs the buffer layout.
            raise ConfigError(f"{key}.optics.enabled=true needs the image buffer layout, but "
                              f"render.max_pixels={render.max_pixels} selects the packed one; valid: "
                              f"{key}.optics.enabled=false or render.max_pixels=null")


def _validate_optics(o, key: str) -> None:
    """The optics eye's settings (aci_jax/eyes/optics.py); checked even when disabled."""
    unknown = sorted(set(o) - {k for k, _ in OPTICS})
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid: {[k for k, _ in OPTICS]}")
    check(o, key, OPTICS)


def _validate_maze(name: str, m, agents: dict, key: str) -> None:
    if "map" not in m:
        raise ConfigError(f"{key}.map is missing")
    try:
        maze = maze_from_config(name, m)
    except MazeError as e:
        raise ConfigError(f"{key}: {e}") from None
    id_map = dict(m.get("agent_id_map") or {})
    for group, names in id_map.items():
        for n in names:
            if n not in agents:
                raise ConfigError(f"{key}.agent_id_map.{group} names unknown agent '{n}'; "
                                  f"valid: {sorted(agents)}")
    for agent in agents:
        groups = [g for g, names in id_map.items() if agent in names]
        cells = sum(len(maze.reset_cells.get(g, [])) for g in groups)
        if cells == 0:
            raise ConfigError(f"{key}: no spawn cell for agent '{agent}' (its groups {groups} have "
                              f"no 'R'/'R:X' cells; map groups: {sorted(maze.reset_cells)})")
    for group, textures in dict(m.get("wall_texture_map") or {}).items():
        for t in textures:
            try:
                validate_texture_name(t)
            except ValueError as e:
                raise ConfigError(f"{key}.wall_texture_map.{group}: {e}") from None

