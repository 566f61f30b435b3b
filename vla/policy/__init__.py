"""Acting with a trained policy: ``Policy`` loaded from an export folder, and its websocket client.

The server (``vla.policy.server``, Ray Serve) is imported on its own: ``Policy`` needs no Ray.
"""

from vla.policy.client import PolicyClient, ServerError
from vla.policy.policy import Observation, Policy, Preprocessor, load_run_config

__all__ = ["Observation", "Policy", "PolicyClient", "Preprocessor", "ServerError", "load_run_config"]
