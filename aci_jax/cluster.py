"""Clusters: profiles, the plan of a launch, and jobs that requeue themselves (CLI: launch/slurm.py).

- A profile (`configs/launch/<name>.yaml`, or any YAML file given by path) holds the Slurm resources
  of one cluster: fields of `Profile`; `--set key=value` overrides any of them. Unknown clusters
  and fields are ConfigErrors listing the valid ones.
- A plan fixes every run folder at submit time: `run_dir=<absolute path>` is passed to each job (the
  config's default, `runs/<expname>/<time>`, resolved now), so a requeued or resubmitted job
  continues the same folder (the commands resume a run folder: aci_jax.runs). A grid of overrides
  (`seed=0,1 trainer.learning_rate=1e-3,3e-4`, Hydra's sweep syntax) is one member per point,
  laid out as `aci_jax.sweep` lays out `-m` sweeps (`<sweep dir>/<swept key=value,...>`).
- A job of several tasks (`--nodes N --gpus-per-node G`: one task per GPU; or `tasks_per_node`)
  runs an evolution as one multi-process JAX program: every task runs `python -m aci_jax.evo`,
  which joins the others (aci_jax.distributed: from Slurm's environment, or, for submitit's local
  executor, from the ACI_JAX_* variables the job sets); only `evo` runs on several tasks.
- A `Job` runs the command (`python -m aci_jax.train ...`) in a subprocess. It is submitit
  `Checkpointable`: on the scheduler's timeout or preemption signal (USR2, `signal_delay_s` before the
  time limit) submitit asks it for a checkpoint, gets the same command back and requeues the job; the
  command, rerun in the same run folder, resumes from the folder's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from submitit.helpers import Checkpointable, DelayedSubmission

from aci_jax.config import CONFIG_DIR, ConfigError
from aci_jax.sweep import grid, member_name, swept_keys, write_sweep_file

PROFILE_DIR = CONFIG_DIR / "launch"
COMMANDS = {"train": "aci_jax.train", "evo": "aci_jax.evo", "eval": "aci_jax.eval"}
EXECUTORS = ("slurm", "local")
REPO = Path(__file__).resolve().parent.parent  # the checkout whose aci_jax the jobs run


@dataclasses.dataclass(frozen=True)
class Profile:
    """The resources of a cluster's jobs (Slurm's names where Slurm has one)."""

    name: str
    executor: str = "slurm"  # slurm | local (a local process through submitit, no Slurm)
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None
    exclude: str | None = None  # nodes never to run on: "node1,node2"
    gpus_per_node: int = 0  # as --gres=gpu[:gpu_type]:N
    gpu_type: str | None = None  # e.g. volta: --gres=gpu:volta:N
    nodes: int = 1
    tasks_per_node: int | None = None  # null: one task per GPU on several nodes, else one
    cpus_per_task: int = 1
    mem_gb: float | None = None  # per node
    mem_per_cpu_gb: float | None = None
    timeout_min: int = 60
    signal_delay_s: int = 120  # the checkpoint-and-requeue signal comes this long before the limit
    max_requeues: int = 10  # requeues after timeouts before a job gives up (preemptions: unlimited)
    array_parallelism: int = 16  # members of a sweep running at once
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load ..., export ...)
    sbatch: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # further #SBATCH flags
    python: str | None = None  # the interpreter on the nodes; default: the one launching

    @property
    def tasks(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.nodes > 1 and self.gpus_per_node else 1

    @property
    def gres(self) -> str | None:
        if not self.gpus_per_node:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else f"gpu:{self.gpus_per_node}"


FIELDS = tuple(f.name for f in dataclasses.fields(Profile) if f.name != "name")
_POSITIVE = ("nodes", "cpus_per_task", "timeout_min", "array_parallelism")
_NON_NEGATIVE = ("gpus_per_node", "signal_delay_s", "max_requeues", "tasks_per_node")


def profiles() -> list[str]:
    """The cluster profiles in configs/launch/."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(cluster: str, sets: Sequence[str] = ()) -> Profile:
    """The profile `cluster` (a name in configs/launch/ or a path to a YAML file) with `key=value`
    overrides (values in YAML: `--set gpus_per_node=2`, `--set exclude=null`)."""
    path = Path(cluster)
    if path.suffix in (".yaml", ".yml") or os.sep in cluster:
        if not path.is_file():
            raise ConfigError(f"cluster file {cluster!r} does not exist")
    else:
        path = PROFILE_DIR / f"{cluster}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown cluster {cluster!r}; valid: {profiles()} (or a path to a "
                              f"profile .yaml; add a cluster as {PROFILE_DIR}/<name>.yaml)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not YAML ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a profile is a mapping of fields; valid fields: {list(FIELDS)}")
    _check_keys(values, f"{path}")
    values.update(parse_sets(sets))
    return make_profile(path.stem, values)


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    out = {}
    for s in sets:
        key, eq, value = s.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {s!r}: expected key=value; valid keys: {list(FIELDS)}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    _check_keys(out, "--set")
    return out


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    bad = sorted(set(values) - set(FIELDS))
    if bad:
        raise ConfigError(f"{where}: unknown profile field(s) {bad}; valid: {list(FIELDS)}")


def make_profile(name: str, values: Mapping[str, Any]) -> Profile:
    """A Profile from field values, each checked against its type and range."""
    _check_keys(values, name)
    hints = typing.get_type_hints(Profile)
    for key, v in values.items():
        _check_type(key, v, hints[key])
    values = dict(values)
    if "setup" in values:
        values["setup"] = tuple(values["setup"] or ())
    if values.get("sbatch") is None:
        values.pop("sbatch", None)
    p = Profile(name=name, **values)
    for key in _POSITIVE:
        if getattr(p, key) < 1:
            raise ConfigError(f"{key}={getattr(p, key)} must be >= 1")
    for key in _NON_NEGATIVE:
        if (getattr(p, key) or 0) < 0:
            raise ConfigError(f"{key}={getattr(p, key)} must be >= 0")
    if p.executor not in EXECUTORS:
        raise ConfigError(f"executor={p.executor!r}; valid: {list(EXECUTORS)}")
    return p


def _check_type(key: str, v: Any, hint: Any) -> None:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args and optional else hint
    if v is None:
        if not optional and key not in ("setup", "sbatch"):
            raise ConfigError(f"{key}=null; {key} needs a value")
        return
    origin = typing.get_origin(base) or base
    ok = {int: lambda: isinstance(v, int) and not isinstance(v, bool),
          float: lambda: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda: isinstance(v, (str, int, float)) and not isinstance(v, bool),
          tuple: lambda: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
          Mapping: lambda: isinstance(v, dict)}.get(origin, lambda: True)()
    if not ok:
        want = {int: "an integer", float: "a number", str: "a string", tuple: "a list of strings",
                Mapping: "a mapping"}.get(origin, str(base))
        raise ConfigError(f"{key}={v!r} must be {want}")


def _mem(gb: float) -> str:
    return f"{int(gb)}G" if float(gb).is_integer() else f"{int(gb * 1024)}M"


def slurm_parameters(p: Profile, job_name: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch flags) of a profile."""
    params = {"job_name": job_name, "partition": p.partition, "qos": p.qos, "account": p.account,
              "constraint": p.constraint, "exclude": p.exclude, "gres": p.gres, "nodes": p.nodes,
              "ntasks_per_node": p.tasks, "cpus_per_task": p.cpus_per_task,
              "mem": None if p.mem_gb is None else _mem(p.mem_gb),
              "mem_per_cpu": None if p.mem_per_cpu_gb is None else _mem(p.mem_per_cpu_gb),
              "time": p.timeout_min, "signal_delay_s": p.signal_delay_s,
              "array_parallelism": p.array_parallelism, "setup": list(p.setup) or None,
              "additional_parameters": {"requeue": True, **{k: v for k, v in p.sbatch.items()}}}
    return {k: v for k, v in params.items() if v is not None}


# -- the job ------------------------------------------------------------------------------------------

class JobFailed(RuntimeError):
    """The command of a job exited with an error."""


def _ignore_preemption_signal() -> None:
    """In the command's process: Slurm signals every process of the job step; the job's submitit
    process handles the signal (checkpoint and requeue), the command keeps running until then."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclasses.dataclass(frozen=True)
class Job(Checkpointable):
    """One command run in a subprocess; requeued with the same command on timeout or preemption."""

    argv: tuple[str, ...]
    cwd: str
    run_dir: str

    def __call__(self) -> str:
        env = {**os.environ, **local_tasks_env(), "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])}
        print(f"[launch] {shlex.join(self.argv)}\n[launch] run folder {self.run_dir}", flush=True)
        code = subprocess.run(self.argv, cwd=self.cwd, env=env, preexec_fn=_ignore_preemption_signal).returncode
        if code != 0:
            raise JobFailed(f"{shlex.join(self.argv[1:])} exited with status {code} (its output is above); "
                            f"submitting it again resumes {self.run_dir}")
        return self.run_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # The command saves its own checkpoints; the requeued job reruns it on the same run folder.
        return DelayedSubmission(self)


def local_tasks_env() -> dict[str, str]:
    """In a task of a local (submitit) job of several tasks: the ACI_JAX_* variables that join the
    tasks' commands into one JAX program (aci_jax.distributed); under Slurm JAX reads Slurm's own."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or int(os.environ.get("SUBMITIT_LOCAL_NTASKS", "1")) <= 1:
        return {}
    job = int(re.sub(r"\D", "", os.environ["SUBMITIT_LOCAL_JOB_ID"]) or 0)
    return {"ACI_JAX_COORDINATOR": f"localhost:{20000 + job % 20000}",
            "ACI_JAX_NUM_PROCESSES": os.environ["SUBMITIT_LOCAL_NTASKS"],
            "ACI_JAX_PROCESS_ID": os.environ["SUBMITIT_LOCAL_GLOBALID"]}


def check_tasks(profile: Profile, command: str) -> None:
    """Several tasks run one evolution together; the other commands run as one task."""
    n = profile.tasks * profile.nodes
    if n > 1 and command != "evo":
        raise ConfigError(f"{command} runs as one task, this launch has {n} ({profile.nodes} node(s) x "
                          f"{profile.tasks} task(s)); several tasks (--nodes N --gpus-per-node G, tasks_per_node) "
                          f"run an evolution only: use --nodes 1 --set tasks_per_node=null, or the evo command")


# -- the plan -------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    run_dir: Path
    overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    command: str
    members: tuple[Member, ...]
    sweep_dir: Path | None  # a grid: the sweep's folder
    cwd: Path

    @property
    def log_dir(self) -> Path:
        """submitit's folder (batch scripts, pickles, logs): `slurm/` in the run or sweep folder."""
        return (self.sweep_dir or self.members[0].run_dir) / "slurm"

    def job(self, member: Member, python: str | None = None) -> Job:
        argv = (python or sys.executable, "-m", COMMANDS[self.command], *member.overrides)
        return Job(argv, str(self.cwd), str(member.run_dir))

    def summary_job(self, python: str | None = None) -> Job:
        return Job((python or sys.executable, "-m", "aci_jax.sweep", str(self.sweep_dir)), str(self.cwd),
                   str(self.sweep_dir))


def _key(o: str) -> str:
    return o.split("=", 1)[0].lstrip("+~")


def _run_dir_override(path: Path) -> str:
    """`run_dir=<path>` as a Hydra override: quoted, since a sweep member's folder name holds `=`,
    `,` and brackets (`seed=0,lr=0.001`)."""
    return "run_dir='" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(overrides: Sequence[str]):
    """The config of a command line (validated), with its hydra section."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from aci_jax.config import validate

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except HydraException as e:
        raise ConfigError(f"bad override in {list(overrides)}: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate(task, here=False)  # the job's node has the devices, not this one (its command checks them)
    return cfg


def make_plan(command: str, overrides: Sequence[str], cwd: str | Path | None = None) -> Plan:
    """The members of a launch with their run folders (absolute, fixed now) and overrides."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command {command!r}; valid: {list(COMMANDS)}")
    cwd = Path(cwd or os.getcwd()).absolute()
    overrides = [o for o in overrides if o not in ("-m", "--multirun")]
    if command == "eval":
        return _eval_plan(overrides, cwd)
    swept = swept_keys(overrides)
    if not swept:
        cfg = _compose(overrides)
        run_dir = cwd / str(cfg.hydra.run.dir)
        rest = [o for o in overrides if _key(o) not in ("run_dir", "hydra.run.dir")]
        return Plan(command, (Member(run_dir.name, run_dir, (*rest, _run_dir_override(run_dir))),), None, cwd)
    sweep_opts = [o for o in overrides if _key(o).startswith("hydra.sweep.")]
    members = grid([o for o in overrides if o not in sweep_opts])
    # every member's config is checked before anything is submitted
    sweep_dir = cwd / str(_compose([*members[0], *sweep_opts]).hydra.sweep.dir)
    for m in members[1:]:
        _compose(m)
    out = []
    for i, m in enumerate(members):
        name = member_name(m, swept, i)
        rest = [o for o in m if _key(o) not in ("run_dir", "hydra.run.dir")]
        out.append(Member(name, sweep_dir / name, (*rest, _run_dir_override(sweep_dir / name))))
    if len({m.name for m in out}) != len(out):
        raise ConfigError("sweep members share run folders: a swept value is repeated")
    return Plan(command, tuple(out), sweep_dir, cwd)


def _eval_plan(overrides: list[str], cwd: Path) -> Plan:
    given = [o.split("=", 1)[1] for o in overrides if _key(o) == "run_dir"]
    if not given:
        raise ConfigError("eval needs run_dir=... (the run folder to evaluate)")
    if swept_keys(overrides):
        raise ConfigError("eval does not sweep: give one value per key")
    run_dir = (cwd / given[-1]).absolute()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"run_dir={given[-1]!r} holds no config.yaml: not a run folder")
    rest = [o for o in overrides if _key(o) != "run_dir"]
    return Plan("eval", (Member(run_dir.name, run_dir, (*rest, f"run_dir={run_dir}")),), None, cwd)


def record_sweep(plan: Plan, overrides: Sequence[str]) -> None:
    """sweep.json of a launched grid (as `-m` writes it), for its summary."""
    if plan.sweep_dir is not None:
        keep = [o for o in overrides if o not in ("-m", "--multirun") and not _key(o).startswith("hydra.sweep.")
                and _key(o) != "run_dir"]
        write_sweep_file(plan.sweep_dir, plan.command, keep)


# -- executors ------------------------------------------------------------------------------------------

def executor(profile: Profile, folder: Path, job_name: str, local: bool = False):
    """A submitit executor for the profile: Slurm, or a local process (`local` or executor: local)."""
    import submitit

    if local or profile.executor == "local":
        ex = submitit.LocalExecutor(folder)
        ex.update_parameters(timeout_min=profile.timeout_min, tasks_per_node=profile.tasks * profile.nodes,
                             signal_delay_s=profile.signal_delay_s)
        return ex
    ex = submitit.SlurmExecutor(folder, max_num_timeout=profile.max_requeues, python=profile.python)
    ex.update_parameters(**slurm_parameters(profile, job_name))
    return ex


def batch_script(profile: Profile, folder: Path, job_name: str, array: int | None = None) -> str:
    """The sbatch script submitit would submit (for --dry-run; needs no Slurm on this machine)."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = profile.python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = slurm_parameters(profile, job_name)
    if array is not None and array > 1:
        params["map_count"] = array
    return _make_sbatch_string(command=command, folder=folder, **params)
