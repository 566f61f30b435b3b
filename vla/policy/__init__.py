"""Acting with a trained policy: ``Policy`` loaded from an export folder, and a loopback server."""

from vla.policy.policy import Observation, Policy, Preprocessor, load_run_config
from vla.policy.server import PolicyClient, PolicyServer

__all__ = ["Observation", "Policy", "PolicyClient", "PolicyServer", "Preprocessor", "load_run_config"]
