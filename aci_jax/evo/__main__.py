"""`python -m aci_jax.evo exp=detection [evo.population_size=16 evo.num_generations=50 ...]`:
evolve the eyes of the exp's agent (see aci_jax.evo.run). The same command resumes.

Several processes started together (Slurm tasks of one step, or ACI_JAX_COORDINATOR /
ACI_JAX_NUM_PROCESSES / ACI_JAX_PROCESS_ID: aci_jax.distributed) run one evolution over all their
devices; process 0 writes the run folder."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from aci_jax import distributed
from aci_jax.config import CONFIG_DIR
from aci_jax.runs import command_errors, command_run_dir


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    with command_errors("evo"):
        distributed.initialize()  # before any JAX computation
        with distributed.stop_together():
            from aci_jax.evo.run import evolve

            run_dir = command_run_dir(cfg, "evo")
            evolve(cfg, run_dir)


if __name__ == "__main__":
    main()
