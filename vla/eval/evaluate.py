"""One evaluation run of an export: closed loop against the baselines, offline, CALVIN; one report.

``run_evaluation`` is what ``pipelines/evaluate.py`` calls. It needs a Ray session (rollouts
are Ray tasks, the offline windows a Ray dataset); the caller starts or joins one.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from vla.config import Config
from vla.data import load_metadata
from vla.eval.calvin import calvin_available
from vla.eval.environments import environment_for, evaluation_episodes
from vla.eval.offline import evaluate_offline
from vla.eval.report import save_rollouts, write_report
from vla.eval.rollout import ConstantPolicy, RandomPolicy, rollout_in_parallel, summarize
from vla.plots import plot_evaluation
from vla.policy import Policy, load_run_config
from vla.storage import localize, normalize_path

log = logging.getLogger("vla.eval")


@dataclass
class ExportEvalOptions:
    episodes: int = 100  # closed-loop episodes per policy
    seed: int = 0  # the k-th episode of a task runs scene EVAL_SEED_OFFSET + seed + k
    env_tasks: list[str] | None = None  # MetaWorld: these tasks instead of the training data's
    max_steps: int | None = None  # MetaWorld: the episode step limit (default MetaWorldConfig.max_steps)
    tasks_per_policy: int = 2  # Ray tasks per policy
    record: int = 3  # episodes per policy saved as image strips
    offline_split: str | None = "val"  # None skips the offline evaluation
    offline_max_batches: int | None = None
    device: str = "cpu"


def constant_action(run: Config) -> list[float]:
    """The constant baseline: the training split's mean action with every binary gripper open (+1)."""
    meta = load_metadata(run.data.path)
    stats = meta.splits[run.data.train_split].action_stats
    if stats is None:
        raise ValueError(f"{run.data.path}: the training split has no action statistics")
    return [1.0 if i in meta.action_space.binary_grippers else mean for i, mean in enumerate(stats.mean)]


def closed_loop(export_dir: str, run: Config, options: ExportEvalOptions) -> tuple[dict, dict]:
    """Trained, random and constant policies on the same scenes; returns (report part, episodes)."""
    env = environment_for(run, options.env_tasks, options.max_steps)
    episodes = evaluation_episodes(env, options.episodes, options.seed)
    constant = constant_action(run)
    factories = {
        "trained": functools.partial(Policy.load, export_dir, options.device),
        "random": RandomPolicy(options.seed, env.action_dim),
        "constant": ConstantPolicy(constant),
    }
    results = rollout_in_parallel(factories, episodes, env, tasks_per_policy=options.tasks_per_policy,
                                  record=options.record)
    policies = {name: summarize(runs, env.outcomes) for name, runs in results.items()}
    best_baseline = max(policies["random"]["success_rate"], policies["constant"]["success_rate"])
    seeds = sorted(e.seed for e in episodes)
    report = {
        "env": env.name,
        "tasks": list(env.tasks),
        "episodes": options.episodes,
        "seeds": [seeds[0], seeds[-1]] if seeds else [],
        "max_steps": env.max_steps,
        "policies": policies,
        "constant_action": constant,
        "margin_over_baselines": policies["trained"]["success_rate"] - best_baseline,
    }
    return report, results


def run_evaluation(export_dir: str, out_dir: str, options: ExportEvalOptions) -> dict:
    """Evaluate the export in ``export_dir``; writes report.json, results.png and strips to ``out_dir``.

    ``export_dir`` may be on object storage (``s3://...``): this process reads a local copy, and
    the rollout tasks are handed the location itself, so each loads it on its own node
    (``Policy.load`` caches it there)."""
    location = normalize_path(export_dir)  # a URI as it is, a local path absolute
    export_dir = localize(location)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    run = load_run_config(export_dir)
    timing: dict[str, float] = {}

    start = time.perf_counter()
    loop_report, episodes = closed_loop(location, run, options)
    timing["closed_loop"] = time.perf_counter() - start

    offline = None
    if options.offline_split:
        start = time.perf_counter()
        policy = Policy.load(export_dir, options.device)
        offline = evaluate_offline(policy, run, export_dir, options.offline_split,
                                   max_batches=options.offline_max_batches)
        timing["offline"] = time.perf_counter() - start

    strips, gifs = save_rollouts(episodes, out)
    if not calvin_available():
        log.info("CALVIN: calvin_env is not installed; skipping its long-horizon evaluation")
    report = {
        "export": location,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "closed_loop": loop_report,
        "offline": offline,
        "calvin": None,  # the CALVIN adapter runs on its own: python -m vla.eval.calvin (needs calvin_env)
        "files": {
            "report": str(out / "report.json"),
            "plot": str(plot_evaluation(loop_report, offline, out / "results.png")),
            "strips": strips,
            "gifs": gifs,
        },
        "timing_s": timing,
    }
    write_report(report, out)
    return report
