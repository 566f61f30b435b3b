"""Evaluating policies: closed-loop rollouts on the built-in environment (Ray tasks), offline
metrics on a held-out split, CALVIN's long-horizon protocol, the report, and evaluation of
checkpoints while training runs. See docs/evaluation.md.

Names are imported on first use, so ``vla.eval.settings`` (held by the training config)
imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "calvin_available": "vla.eval.calvin",
    "evaluate_calvin": "vla.eval.calvin",
    "ExportEvalOptions": "vla.eval.evaluate",
    "run_evaluation": "vla.eval.evaluate",
    "evaluate_offline": "vla.eval.offline",
    "ConstantPolicy": "vla.eval.rollout",
    "EpisodeResult": "vla.eval.rollout",
    "RandomPolicy": "vla.eval.rollout",
    "rollout_in_parallel": "vla.eval.rollout",
    "run_episodes": "vla.eval.rollout",
    "summarize": "vla.eval.rollout",
    "CheckpointEvalConfig": "vla.eval.settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
