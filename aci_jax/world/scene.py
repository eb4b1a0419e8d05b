"""World building: maze maps, point agents and sphere objects → one MjModel (runs once, outside jit).

Walls are visual boxes (each maze's wall cells merged into few boxes). Collision is agent↔wall
only, and its cost must not grow with the maze: with `proxy_walls` (the default) the walls collide
with nothing and a few cell-sized "proxy" boxes on mocap bodies (render group 3, never seen) are
moved by the env each step onto the wall cells around the agent, so MJX's broad phase always has
the same few candidates. `proxy_walls=False` makes the real walls collide instead (the native
MuJoCo reference). Objects are mocap bodies: their pose is data, set at reset, on respawn, or every
step by scripted movers (aci_jax.envs.movers).

Lighting (`env.lighting`): a directional "sun" and MuJoCo's headlight light what has no emission (the
floor, untextured objects); wall materials have emission `wall_emission` (1: ACI's flat, unlit look).
Light seeking turns all three off, so only the goal's point light shows the scene (and the glowing
goal itself: an untextured object with `emission` gets a plain material with it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import mujoco
import numpy as np

from aci_jax.world.maze import Maze, maze_from_config
from aci_jax.world.textures import stripe_texture

MARKER_GROUP = 2  # render group hidden from eyes
FLOOR_RGBA = (0.1, 0.1, 0.1, 1.0)
AGENT_RGBA = (0.8, 0.8, 0.8, 1.0)
PROXY_GROUP = 3  # collision-only proxies, hidden from eyes
MAZE_GAP_CELLS = 2
PROXY_PARK_Z = -100.0  # where unused proxies wait, far below the floor


@dataclasses.dataclass(frozen=True)
class AgentInfo:
    """Indices of a point agent in the model: joints (x, y, yaw) and actuators (vx, vy, yaw)."""

    name: str
    body: int
    geom: int
    qpos_adr: np.ndarray  # (3,) qpos indices of x, y, yaw
    dof_adr: np.ndarray  # (3,)
    actuators: np.ndarray  # (3,)
    radius: float


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """A mocap sphere object (goal, adversary, light...)."""

    name: str
    body: int
    geom: int
    mocap: int
    radius: float


@dataclasses.dataclass(frozen=True)
class MazeInfo:
    """A maze placed in the world: its grid, world offset of its centre and wall geoms per cell."""

    maze: Maze
    offset: np.ndarray  # (2,) world xy of the maze centre
    cell_geom: np.ndarray  # (rows, cols) int: wall geom id covering each cell, -1 if free
    group_materials: dict[str, np.ndarray]  # wall texture group -> candidate material ids

    def cell_world(self, i, j) -> np.ndarray:
        return self.maze.cell_center(i, j) + self.offset


@dataclasses.dataclass(frozen=True)
class World:
    model: mujoco.MjModel
    mazes: list[MazeInfo]
    agents: dict[str, AgentInfo]  # point agents (trainable first)
    objects: dict[str, ObjectInfo]
    floor_geom: int
    proxy_mocap: np.ndarray  # (n_proxy_sets, 8) mocap ids of the wall proxies (one set per maze)

    @property
    def wall_geoms(self) -> np.ndarray:
        ids = [m.cell_geom[m.cell_geom >= 0] for m in self.mazes]
        return np.unique(np.concatenate(ids)) if ids else np.zeros(0, int)


def _add_texture_material(spec, cache: dict, texture: str, repeat: float, uniform: bool,
                          rgba=(1, 1, 1, 1), emission: float = 1.0) -> str:
    key = (texture, repeat, uniform, tuple(rgba), emission)
    if key in cache:
        return cache[key]
    name = f"mat{len(cache)}_{texture}"
    if texture not in {t.name for t in spec.textures}:
        img = stripe_texture(texture)
        tex = spec.add_texture(name=texture, type=mujoco.mjtTexture.mjTEXTURE_2D,
                               width=img.shape[1], height=img.shape[0], nchannel=3)
        tex.data = img.tobytes()
    mat = spec.add_material(name=name, rgba=list(rgba), emission=emission,
                            texrepeat=[repeat, repeat], texuniform=uniform)
    mat.textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = texture
    cache[key] = name
    return name


def build_world(env_cfg: Mapping[str, Any], proxy_walls: bool = True) -> World:
    """Compile the env config's mazes, agents and objects into one MjModel plus index tables."""
    spec = mujoco.MjSpec()
    spec.modelname = "aci_jax"
    spec.option.timestep = float(env_cfg["physics_dt"])
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.gravity = [0, 0, -9.81]
    # One sphere touching a few boxes: a handful of solver iterations converge.
    spec.option.iterations = int(env_cfg.get("solver_iterations", 100))
    spec.option.ls_iterations = int(env_cfg.get("ls_iterations", 50))
    # MJX broad phase: keep only the nearest few agent-wall pairs per step.
    spec.add_numeric(name="max_geom_pairs", data=[float(env_cfg.get("max_geom_pairs", 4))])
    spec.add_numeric(name="max_contact_points", data=[float(env_cfg.get("max_contact_points", 4))])
    materials: dict = {}
    lighting = dict(env_cfg.get("lighting") or {})
    wall_emission = float(lighting.get("wall_emission", 1.0))
    spec.visual.headlight.active = int(bool(lighting.get("headlight", True)))

    mazes = [maze_from_config(name, m) for name, m in env_cfg["mazes"].items()]
    widths = [m.width for m in mazes]
    gap = MAZE_GAP_CELLS * max(m.scale for m in mazes)
    total = sum(widths) + gap * (len(mazes) - 1)
    xs = np.cumsum([0.0] + [w + gap for w in widths[:-1]]) + np.array(widths) / 2 - total / 2
    extent = max(total, max(m.length for m in mazes)) / 2 + gap

    _match_eye_renderer(spec, extent)
    if lighting.get("sun", True):
        light = spec.worldbody.add_light(name="sun", pos=[0, 0, 10], dir=[0, 0, -1],
                                         diffuse=[0.4, 0.4, 0.4], ambient=[0.1, 0.1, 0.1],
                                         specular=[0, 0, 0], castshadow=False)
        light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    floor = spec.worldbody.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE,
                                    size=[extent, extent, 0.1], rgba=list(FLOOR_RGBA),
                                    contype=0, conaffinity=0)

    wall_specs = []
    for k, (maze, x) in enumerate(zip(mazes, xs)):
        cfg = env_cfg["mazes"][maze.name]
        tex_map = {str(g): list(v) for g, v in dict(cfg.get("wall_texture_map") or {}).items()}
        group_mats = {}
        for g in sorted(set(maze.wall_group[maze.wall].tolist())):
            names = tex_map.get(g) or tex_map.get("default") or ["vertical_10"]
            group_mats[g] = [_add_texture_material(spec, materials, t, 1.0 / maze.scale, True,
                                                   emission=wall_emission) for t in names]
        boxes = []
        for b, box in enumerate(maze.wall_boxes()):
            c0, c1 = maze.cell_center(box.i0, box.j0), maze.cell_center(box.i1, box.j1)
            centre = (c0 + c1) / 2
            half = [(box.j1 - box.j0 + 1) * maze.scale / 2, (box.i1 - box.i0 + 1) * maze.scale / 2]
            geom = spec.worldbody.add_geom(
                name=f"wall_{maze.name}_{b}", type=mujoco.mjtGeom.mjGEOM_BOX,
                pos=[centre[0] + x, centre[1], maze.wall_half_height],
                size=[half[0], half[1], maze.wall_half_height],
                material=group_mats[box.group][0], contype=0, conaffinity=0 if proxy_walls else 1)
            boxes.append((box, geom))
        wall_specs.append((maze, np.array([x, 0.0]), boxes, group_mats))
        if proxy_walls:  # the 8 neighbours of the agent's cell, sized like this maze's cells
            for p in range(8):
                body = spec.worldbody.add_body(name=f"proxy_{k}_{p}", pos=[0, 0, PROXY_PARK_Z],
                                               mocap=True)
                body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, group=PROXY_GROUP,
                              size=[maze.scale / 2, maze.scale / 2, maze.wall_half_height],
                              rgba=[0, 0, 0, 0], contype=0, conaffinity=1)

    agent_specs, object_specs = [], []
    for name, a in env_cfg["agents"].items():
        if a["kind"] == "point":
            agent_specs.append((name, _add_point_agent(spec, name, a)))
        else:
            object_specs.append((name, _add_object(spec, materials, name, a)))

    model = spec.compile()
    maze_infos = []
    for maze, offset, boxes, group_mats in wall_specs:
        cell_geom = -np.ones(maze.shape, dtype=np.int32)
        for box, geom in boxes:
            cell_geom[box.i0:box.i1 + 1, box.j0:box.j1 + 1] = geom.id
        mats = {g: np.array([model.material(n).id for n in names]) for g, names in group_mats.items()}
        maze_infos.append(MazeInfo(maze, offset, cell_geom, mats))

    agents = {}
    for name, _ in agent_specs:
        joints = [model.joint(f"{name}_{j}") for j in ("x", "y", "yaw")]
        agents[name] = AgentInfo(
            name, model.body(name).id, model.geom(name).id,
            np.array([j.qposadr[0] for j in joints]), np.array([j.dofadr[0] for j in joints]),
            np.array([model.actuator(f"{name}_{a}").id for a in ("vx", "vy", "yaw")]),
            float(model.geom(name).size[0]))
    objects = {name: ObjectInfo(name, model.body(name).id, model.geom(name).id,
                                int(model.body(name).mocapid[0]), float(model.geom(name).size[0]))
               for name, _ in object_specs}
    proxies = np.array([[model.body(f"proxy_{k}_{p}").mocapid[0] for p in range(8)]
                        for k in range(len(mazes))] if proxy_walls else np.zeros((0, 8)), dtype=np.int32)
    return World(model, maze_infos, agents, objects, floor.id, proxies)


def _match_eye_renderer(spec, extent: float) -> None:
    """Settings that make MuJoCo's own renderer (viewer, mujoco.Renderer) draw what the eyes see.

    The eyes' ray caster has no specular and no shadows: lights and the headlight get no specular
    colour and cast no shadows (MuJoCo renders shadow-casting lights in extra passes whose clipped
    colours add up, brightening textures beyond what one lighting sum gives). The headlight keeps
    MuJoCo's defaults (ambient 0.1, diffuse 0.4, along the camera axis), as the ray caster does.
    The model's extent is the world's, not the parked wall proxies' (100 m down), and the near clip
    plane is 1 cm, so a camera near an object is not clipped at 1.1 m.
    """
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.stat.extent = float(extent)
    spec.stat.center = [0.0, 0.0, 0.0]
    spec.visual.map.znear = 0.01 / float(extent)


def _add_point_agent(spec, name: str, a: Mapping[str, Any]):
    """Point agent: sphere on slide x/y and hinge yaw; velocity actuators on x/y, position on yaw."""
    r = float(a["radius"])
    body = spec.worldbody.add_body(name=name, pos=[0, 0, r])
    for j, axis in (("x", [1, 0, 0]), ("y", [0, 1, 0])):
        body.add_joint(name=f"{name}_{j}", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=axis, damping=1)
    body.add_joint(name=f"{name}_yaw", type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0, 0, 1], damping=1)
    body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[r, 0, 0],
                  mass=float(a.get("mass", 1.0)), rgba=list(a.get("rgba", AGENT_RGBA)),
                  contype=1, conaffinity=0, condim=3)
    speed = float(a.get("max_speed", 10.0))
    for act in ("vx", "vy"):
        spec.add_actuator(name=f"{name}_{act}", target=f"{name}_{act[1]}",
                          trntype=mujoco.mjtTrn.mjTRN_JOINT, ctrlrange=[-speed, speed],
                          ctrllimited=True).set_to_velocity(kv=float(a.get("kv", 100.0)))
    spec.add_actuator(name=f"{name}_yaw", target=f"{name}_yaw",
                      trntype=mujoco.mjtTrn.mjTRN_JOINT).set_to_position(
                          kp=float(a.get("yaw_kp", 20.0)), kv=float(a.get("yaw_kv", 0.0)))
    return body


def _add_object(spec, materials: dict, name: str, a: Mapping[str, Any]):
    """Sphere object on a mocap body; optional stripe texture, marker (group 2) and light.

    A textured object shows its material only (the texture's own colours, white material rgba,
    emission `emission`, default 1 as ACI's materials): its geom keeps MuJoCo's default rgba, which
    MuJoCo reads as "use the material", unless the config gives an `rgba`, which then tints the
    texture in MuJoCo and in aci_jax's renderer alike. Untextured objects take `rgba` (default
    white). The marker takes `marker_rgba` (default: the object's rgba).
    """
    r = float(a["radius"])
    body = spec.worldbody.add_body(name=name, pos=[0, 0, r], mocap=True)
    # Turned objects are rotated 90° about y, so their vertical stripes run horizontally.
    quat = [np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0] if a.get("turned") else [1, 0, 0, 0]
    rgba = a.get("rgba")
    kw = {} if rgba is None and a.get("texture") else {"rgba": list(rgba or [1, 1, 1, 1])}
    if a.get("texture"):  # the texture's own colours (white material): colour tells nothing apart
        kw["material"] = _add_texture_material(spec, materials, a["texture"], 1.0, False,
                                               emission=float(a.get("emission", 1.0)))
    elif a.get("emission") is not None:  # a plain glowing sphere (the light-seeking goal)
        kw["material"] = spec.add_material(name=f"{name}_glow", rgba=list(rgba or [1, 1, 1, 1]), emission=float(a["emission"])).name
    body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[r, 0, 0], quat=quat,
                  contype=0, conaffinity=0, **kw)
    body.add_geom(name=f"{name}_marker", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[0.1 * r + 0.05, 0, 0],
                  pos=[0, 0, r + 0.2], rgba=list(a.get("marker_rgba") or rgba or [1, 1, 1, 1]),
                  group=MARKER_GROUP,
                  contype=0, conaffinity=0)
    if a.get("light"):
        lt = a["light"]
        light = body.add_light(name=f"{name}_light", pos=[0, 0, 0],
                               diffuse=list(lt.get("diffuse", [1, 1, 1])),
                               attenuation=list(lt.get("attenuation", [1, 0, 0.5])),
                               specular=[0, 0, 0], castshadow=False)
        light.type = mujoco.mjtLightType.mjLIGHT_POINT
    return body
