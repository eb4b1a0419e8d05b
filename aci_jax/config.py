"""Hydra config composition and validation: bad input fails here, naming the key and what is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from aci_jax.world.maze import MazeError, maze_from_config
from aci_jax.world.textures import validate_texture_name

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
HEADINGS = ("absolute", "relative")
OPTICS_KEYS = ("enabled", "aperture", "lens", "height_map", "mask", "focal_length", "f_number",
               "refractive_index", "wavelengths", "depths", "noise_std", "psf_size", "pupil_samples",
               "psf_oversample", "height_samples")
AGENT_KINDS = ("point", "object")


class ConfigError(ValueError):
    """A config value that aci_jax cannot run with."""


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


def validate(cfg: DictConfig) -> None:
    """Check every value the world, eyes and tasks depend on; raise ConfigError on the first bad one."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # an interpolation pointing nowhere
        raise ConfigError(f"config does not resolve: {e}") from None
    for variant in (False, True):
        env = env_config(cfg, eval=variant)
        where = "eval_env" if variant and "eval_env" in cfg else "env"
        _validate_env(env, where)
    if "train" in cfg:
        for key, lo in (("checkpoint_every", 1), ("max_to_keep", 1), ("eval_every", 0), ("early_stop", 1)):
            v = cfg.train.get(key)
            if v is not None and not (isinstance(v, int) and v >= lo):
                raise ConfigError(f"train.{key}={v!r} must be an integer >= {lo}"
                                  + (" or null (no early stop)" if key == "early_stop" else ""))
    if "trainer" in cfg:
        from aci_jax.rl.ppo import PPOConfig  # late: imports jax

        try:
            PPOConfig.from_config(cfg.trainer)
        except ValueError as e:
            raise ConfigError(f"trainer: {e}") from None


def trainable_agents(env: DictConfig) -> list[str]:
    """Names of an env config's trainable point agents (a valid config has exactly one)."""
    return [n for n, a in env.agents.items() if a.get("kind") == "point" and a.get("trainable", True)]


def _validate_env(env: DictConfig, where: str) -> None:
    _positive(env, where, "physics_dt", float)
    for key in ("frame_skip", "max_episode_steps", "frame_stack", "n_envs"):
        _positive(env, where, key, int)
    if env.maze_selection not in ("cycle", "random"):
        raise ConfigError(f"{where}.maze_selection={env.maze_selection!r}; valid: 'cycle', 'random'")
    _positive(env.render, f"{where}.render", "supersample", int)
    if not env.mazes:
        raise ConfigError(f"{where}.mazes is empty; add one, e.g. 'exp=detection' or a maze config")
    if not env.agents:
        raise ConfigError(f"{where}.agents is empty; add a point agent")
    agents = dict(env.agents)
    trainable = trainable_agents(env)
    for name, a in agents.items():
        if a.get("kind") not in AGENT_KINDS:
            raise ConfigError(f"{where}.agents.{name}.kind={a.get('kind')!r}; valid: {AGENT_KINDS}")
        if not a.get("radius", 0) > 0:
            raise ConfigError(f"{where}.agents.{name}.radius={a.get('radius')!r} must be > 0")
        if a.get("texture"):
            try:
                validate_texture_name(a.texture)
            except ValueError as e:
                raise ConfigError(f"{where}.agents.{name}.texture: {e}") from None
    if len(trainable) != 1:
        raise ConfigError(f"{where}.agents: need exactly one trainable point agent, got {trainable}")
    agent = agents[trainable[0]]
    if agent.get("heading", "absolute") not in HEADINGS:
        raise ConfigError(f"{where}.agents.{trainable[0]}.heading={agent.heading!r}; valid: {list(HEADINGS)}")
    if agent.get("heading") == "relative":  # max_turn defaults to 45° (configs older than the key)
        _positive({"max_turn": agent.get("max_turn", 45.0)}, f"{where}.agents.{trainable[0]}", "max_turn", float)
    _validate_eyes(agents[trainable[0]].get("eyes"), env.render, f"{where}.agents.{trainable[0]}.eyes")
    for name, m in env.mazes.items():
        _validate_maze(name, m, agents, f"{where}.mazes.{name}")
    from aci_jax.envs.tasks import validate_task  # late: tasks import jax

    validate_task(env.task, agents, f"{where}.task")


def _validate_eyes(eyes, render, key: str) -> None:
    if eyes is None:
        raise ConfigError(f"{key} is missing; e.g. '/eyes@env.agents.agent.eyes: detection'")
    for field in ("num_eyes", "resolution", "fov", "lat_range", "lon_range"):
        v = eyes.get(field)
        if v is None or len(v) != 2:
            raise ConfigError(f"{key}.{field}={v!r} must be a pair of numbers")
    for v in eyes.num_eyes:
        if int(v) != v or v < 1:
            raise ConfigError(f"{key}.num_eyes={list(eyes.num_eyes)}: counts must be integers >= 1")
    for v in eyes.resolution:
        if int(v) != v or v < 1:
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
    if render.max_resolution is not None and max(eyes.resolution) > render.max_resolution:
        raise ConfigError(f"{key}.resolution={list(eyes.resolution)} does not fit the buffer "
                          f"render.max_resolution={render.max_resolution}; valid: each <= "
                          f"{render.max_resolution}")
    if eyes.get("optics") is not None:
        _validate_optics(eyes.optics, f"{key}.optics")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_optics(o, key: str) -> None:
    """The optics eye's settings (aci_jax/eyes/optics.py); checked even when disabled."""
    unknown = sorted(set(o) - set(OPTICS_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid: {list(OPTICS_KEYS)}")
    for k in ("enabled", "lens"):
        if k in o and not isinstance(o[k], bool):
            raise ConfigError(f"{key}.{k}={o[k]!r} must be true or false")
    a = o.get("aperture", 1.0)
    if not (_number(a) and 0 <= a <= 1):
        raise ConfigError(f"{key}.aperture={a!r} must be a number in [0, 1] (radius fraction of the pupil)")
    for k in ("focal_length", "f_number"):
        if k in o and not (_number(o[k]) and o[k] > 0):
            raise ConfigError(f"{key}.{k}={o[k]!r} must be a number > 0")
    n = o.get("refractive_index", 1.5)
    if not (_number(n) and n > 1):
        raise ConfigError(f"{key}.refractive_index={n!r} must be a number > 1")
    w = o.get("wavelengths")
    if w is not None and not (len(w) == 3 and all(_number(x) and 100 <= x <= 10000 for x in w)):
        raise ConfigError(f"{key}.wavelengths={w!r} must be three wavelengths in nm (R, G, B), "
                          "each in [100, 10000]")
    z = o.get("depths")
    if z is not None and not (len(z) >= 1 and all(_number(x) and x > 0 for x in z)):
        raise ConfigError(f"{key}.depths={z!r} must be a non-empty list of depths > 0 (m)")
    ns = o.get("noise_std", 0.0)
    if not (_number(ns) and ns >= 0):
        raise ConfigError(f"{key}.noise_std={ns!r} must be a number >= 0")
    ps = o.get("psf_size", 5)
    if not (isinstance(ps, int) and not isinstance(ps, bool) and ps >= 1 and ps % 2 == 1):
        raise ConfigError(f"{key}.psf_size={ps!r} must be an odd integer >= 1 (pixels)")
    for k, lo in (("pupil_samples", 32), ("psf_oversample", 1), ("height_samples", 2)):
        v = o.get(k)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= lo):
            raise ConfigError(f"{key}.{k}={v!r} must be an integer >= {lo}")
    h = o.get("height_map")
    if h is not None and not (len(h) >= 2 and all(_number(x) for x in h)):
        raise ConfigError(f"{key}.height_map={h!r} must be null or a list of >= 2 heights (m)")
    m = o.get("mask")
    if m is not None:
        rows = [list(r) if not isinstance(r, (int, float, str)) else None for r in m]
        if (not rows or any(r is None or len(r) != len(rows[0]) or not r for r in rows)
                or any(not _number(x) or x not in (0, 1) for r in rows for x in r)):
            raise ConfigError(f"{key}.mask={m!r} must be null or a rectangular list of rows of 0/1")


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


def _positive(section, where: str, key: str, kind) -> Any:
    v = section.get(key)
    if v is None or not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 or (
            kind is int and int(v) != v):
        raise ConfigError(f"{where}.{key}={v!r} must be a positive {kind.__name__}")
    return v
