"""Launch aci_jax's commands on a Slurm cluster (through submitit) or as a local process.

    python launch/slurm.py --cluster euler train exp=detection
    python launch/slurm.py --cluster euler evo exp=detection evo.population_size=32
    python launch/slurm.py --cluster supercloud eval run_dir=runs/detection/2026-01-01_10-00-00
    python launch/slurm.py --cluster euler train exp=detection seed=0,1,2 trainer.learning_rate=1e-3,3e-4
    python launch/slurm.py --cluster euler --dry-run evo exp=detection   # the batch script, nothing submitted
    python launch/slurm.py --cluster euler --local train exp=quick        # the same job as a local process
    python launch/slurm.py --cluster my/cluster.yaml --set partition=gpu --set timeout_min=240 train ...

The cluster is a profile of configs/launch/ (or a path to one); `--set key=value` overrides a field,
as do --nodes, --gpus-per-node and --array-parallelism. The run folder is fixed at submit time
(`run_dir=...`, chosen now when not given); on timeout or preemption the job requeues itself and
continues the same run folder, and submitting the same command with that run_dir again resumes it.
With `--nodes N --gpus-per-node G` (N > 1) an evolution is one JAX program of one task per GPU
(aci_jax.distributed); `--set tasks_per_node=K` gives K tasks per node (e.g. on CPUs, or locally).
Overrides with a grid (`a=1,2 b=x,y`) are a sweep: one Slurm array (at most --array-parallelism
members at once), one run folder per member, then a job writing the sweep's summary.
Exit status: 0 submitted (or, with --local, the job succeeded), 1 the submission or local job
failed, 2 a bad cluster, field, command or override.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing it
    sys.path.insert(0, str(REPO))

from aci_jax.cluster import COMMANDS, Plan, Profile, batch_script, check_tasks, executor, load_profile, make_plan, profiles, record_sweep  # noqa: E402
from aci_jax.config import ConfigError  # noqa: E402


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="launch/slurm.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"clusters: {', '.join(profiles())}")
    p.add_argument("--cluster", required=True, help="a profile of configs/launch/ or a path to a .yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile field")
    p.add_argument("--nodes", type=int, help="nodes per job (profile field nodes)")
    p.add_argument("--gpus-per-node", type=int, help="profile field gpus_per_node")
    p.add_argument("--array-parallelism", type=int, help="sweep members running at once")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the batch script and resources; submit nothing")
    mode.add_argument("--local", action="store_true", help="run the job here as a local process (no Slurm) and wait")
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the command (a grid makes a sweep)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") and a not in ("-m", "--multirun")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    overrides = [*args.overrides, *(a for a in extra if not a.startswith("-"))]
    sets = list(args.set)
    for flag, key in (("nodes", "nodes"), ("gpus_per_node", "gpus_per_node"), ("array_parallelism", "array_parallelism")):
        if getattr(args, flag) is not None:
            sets.append(f"{key}={getattr(args, flag)}")
    args.set = sets
    return args, overrides


def resources(profile: Profile) -> str:
    fields = {k: v for k, v in vars(profile).items() if v not in (None, (), {}) and k != "name"}
    fields["tasks"] = profile.tasks
    if profile.gres:
        fields["gres"] = profile.gres
    return ", ".join(f"{k}={v}" for k, v in fields.items())


def describe(plan: Plan) -> None:
    if plan.sweep_dir is not None:
        print(f"sweep folder: {plan.sweep_dir} ({len(plan.members)} members)")
    for m in plan.members:
        print(f"  run folder {m.run_dir}")
        print(f"    python -m {COMMANDS[plan.command]} {' '.join(m.overrides)}")


def dry_run(plan: Plan, profile: Profile) -> int:
    local = profile.executor == "local"
    print(f"cluster {profile.name} ({'local process' if local else 'Slurm'}): {resources(profile)}")
    describe(plan)
    if local:
        print("(runs as a local process through submitit; nothing submitted)")
        return 0
    n = len(plan.members)
    print(f"\n# batch script ({'one array of ' + str(n) + ' tasks' if n > 1 else 'one job'}), "
          f"written into {plan.log_dir}:")
    print(batch_script(profile, plan.log_dir, f"aci_{plan.command}", array=n))
    if plan.sweep_dir is not None:
        print(f"# then a summary job after the array (afterany): python -m aci_jax.sweep {plan.sweep_dir}")
    print("(dry run: nothing submitted)")
    return 0


def submit(plan: Plan, profile: Profile) -> int:
    ex = executor(profile, plan.log_dir, f"aci_{plan.command}")
    python = profile.python
    if len(plan.members) == 1:
        jobs = [ex.submit(plan.job(plan.members[0], python))]
    else:
        with ex.batch():
            jobs = [ex.submit(plan.job(m, python)) for m in plan.members]
    print(f"submitted to {profile.name}: {resources(profile)}")
    for job, m in zip(jobs, plan.members):
        print(f"  job {job.job_id}: run folder {m.run_dir}")
        print(f"    log {job.paths.stdout}\n    err {job.paths.stderr}")
    if plan.sweep_dir is not None:
        array_id = jobs[0].job_id.split("_")[0]
        summary = executor(profile, plan.log_dir, "aci_sweep_summary")
        summary.update_parameters(dependency=f"afterany:{array_id}", gres=None, ntasks_per_node=1, nodes=1,
                                  cpus_per_task=1, time=min(30, profile.timeout_min))
        sj = summary.submit(plan.summary_job(python))
        print(f"  job {sj.job_id}: the sweep's summary once the array ends (python -m aci_jax.sweep "
              f"{plan.sweep_dir}); log {sj.paths.stdout}")
    print(f"follow: squeue -j {','.join(sorted({j.job_id.split('_')[0] for j in jobs}))}; resume after a "
          f"failure: submit the same command again with the same run_dir / hydra.sweep.dir")
    return 0


def run_local(plan: Plan, profile: Profile) -> int:
    """Each member as a local process through submitit, one after another, its log followed here."""
    for m in plan.members:
        ex = executor(profile, plan.log_dir, f"aci_{plan.command}", local=True)
        job = ex.submit(plan.job(m, profile.python))
        print(f"local job {job.job_id}: run folder {m.run_dir}\n  log {job.paths.stdout}\n  err {job.paths.stderr}",
              flush=True)
        if not _follow(job):
            print(f"launch: the job failed: {job.exception()}", file=sys.stderr)
            return 1
    if plan.sweep_dir is not None:
        from aci_jax.sweep import summarize

        summarize(plan.sweep_dir)
    return 0


def _follow(job) -> bool:
    """Print the job's output as it comes; True when it succeeded."""
    pos = 0
    try:
        while True:
            finished = job.done()
            if job.paths.stdout.exists():
                with open(job.paths.stdout) as f:
                    f.seek(pos)
                    text = f.read()
                    pos = f.tell()
                if text:
                    print(text, end="", flush=True)
            if finished:
                return job.exception() is None
            time.sleep(0.5)
    except KeyboardInterrupt:
        job.cancel()
        raise


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        profile = load_profile(args.cluster, args.set)
        check_tasks(profile, args.command)
        plan = make_plan(args.command, overrides)
        if args.dry_run:
            return dry_run(plan, profile)
        # the jobs import aci_jax (submitit unpickles them): this checkout's
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])
        record_sweep(plan, overrides)
        if args.local or profile.executor == "local":
            return run_local(plan, profile)
        return submit(plan, profile)
    except ConfigError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed sbatch (no Slurm here, a refused submission): one line, no traceback
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        if isinstance(e, (FailedJobError, FailedSubmissionError, RuntimeError)) and not isinstance(e, ConfigError):
            print(f"launch: submission failed: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    raise SystemExit(main())
