"""Evolution of eyes: genes and constraints (`genome`), evosax strategies (`strategy`), a generation
trained as one vmapped program (`population`), the resumable loop (`run`), plots and `analyze`.
`python -m aci_jax.evo exp=detection [overrides]` runs an evolution."""
