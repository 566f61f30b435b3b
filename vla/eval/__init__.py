"""Evaluating policies: closed-loop rollouts on the built-in environment (Ray tasks), offline
metrics on a held-out split, CALVIN's long-horizon protocol, and the report. See docs/evaluation.md."""

from vla.eval.calvin import calvin_available, evaluate_calvin
from vla.eval.evaluate import EvalOptions, run_evaluation
from vla.eval.offline import evaluate_offline
from vla.eval.rollout import ConstantPolicy, EpisodeResult, RandomPolicy, rollout_in_parallel, run_episodes, summarize

__all__ = [
    "ConstantPolicy",
    "EpisodeResult",
    "EvalOptions",
    "RandomPolicy",
    "calvin_available",
    "evaluate_calvin",
    "evaluate_offline",
    "rollout_in_parallel",
    "run_episodes",
    "run_evaluation",
    "summarize",
]
