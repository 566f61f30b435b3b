"""The synthetic task: scene, rendering, dynamics, scripted expert, success."""

from vla.sim.env import COLOURS, SimConfig, SyntheticEnv

__all__ = ["COLOURS", "SimConfig", "SyntheticEnv"]
