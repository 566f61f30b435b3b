"""The synthetic task: scene, rendering, dynamics, scripted expert, success."""

from vla.sim.env import COLOURS, OUTCOMES, SimConfig, SyntheticEnv

__all__ = ["COLOURS", "OUTCOMES", "SimConfig", "SyntheticEnv"]
