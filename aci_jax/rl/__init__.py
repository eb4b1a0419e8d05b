"""Reinforcement learning: PPO (pure JAX, vmappable over a population) and its actor-critic networks."""

from aci_jax.rl.networks import ActorCritic, NetworkConfig
from aci_jax.rl.ppo import PPO, PPOConfig, TrainState, make_train, train

__all__ = ["ActorCritic", "NetworkConfig", "PPO", "PPOConfig", "TrainState", "make_train", "train"]
