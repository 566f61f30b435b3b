"""Evaluate a trained policy export: closed loop (against random and constant baselines) and offline.

    python pipelines/evaluate.py                                   # the demo run's export, 100 episodes each
    python pipelines/evaluate.py --export ~/vla_runs/NAME/export --episodes 200 --out eval/NAME
    python pipelines/evaluate.py --offline-split none              # closed loop only
    python pipelines/evaluate.py --export ~/vla_runs/metaworld/export --env-tasks MT10   # MetaWorld data: other tasks

Writes <out>/report.json (fields: docs/evaluation.md), <out>/results.png and image strips
of a few rollouts. With no RAY_ADDRESS a local Ray instance starts; with one, it joins that cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vla.storage import localize

DEFAULT_EXPORT = "~/vla_runs/demo/export"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", default=DEFAULT_EXPORT, help=f"policy export folder (default {DEFAULT_EXPORT})")
    parser.add_argument("--episodes", type=int, default=100, help="closed-loop episodes per policy (default 100)")
    parser.add_argument("--offline-split", default="val", help="held-out split for offline metrics; 'none' skips")
    parser.add_argument("--out", help="output folder (default: <export>/../eval)")
    parser.add_argument("--seed", type=int, default=0, help="first evaluation scene offset (default 0)")
    parser.add_argument("--tasks", type=int, default=2, help="Ray tasks per policy (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda)")
    parser.add_argument("--env-tasks", help="MetaWorld: tasks to evaluate (names, MT10 or MT50; default: the training data's)")
    parser.add_argument("--max-steps", type=int, help="MetaWorld: the episode step limit (default 200)")
    return parser.parse_args(argv)


def check_environment(export: Path, args: argparse.Namespace) -> list[str] | None:
    """Before Ray starts: the MetaWorld options make sense for this export, and MetaWorld can render."""
    from vla.data import load_metadata
    from vla.policy import load_run_config
    from vla.sim.metaworld import check_gl, resolve_tasks

    metaworld = load_metadata(load_run_config(export).data.path).source == "metaworld"
    if not metaworld:
        if args.env_tasks or args.max_steps is not None:
            raise ValueError("--env-tasks and --max-steps apply to exports trained on MetaWorld data only")
        return None
    if args.max_steps is not None and not 1 <= args.max_steps <= 500:
        raise ValueError(f"--max-steps: must be in [1, 500], got {args.max_steps}")
    tasks = resolve_tasks(args.env_tasks, "--env-tasks") if args.env_tasks else None
    check_gl()
    return tasks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        export = Path(localize(args.export))  # an s3:// export is cached locally
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not (export / "model.safetensors").is_file():
        print(f"error: {export} is not a policy export (train one first: python pipelines/train.py)", file=sys.stderr)
        return 2
    try:
        env_tasks = check_environment(export, args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from vla.eval.evaluate import ExportEvalOptions, run_evaluation  # imports Ray and torch
    from vla.train.launch import ensure_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ensure_ray()
    options = ExportEvalOptions(
        episodes=args.episodes,
        seed=args.seed,
        tasks_per_policy=args.tasks,
        offline_split=None if args.offline_split.lower() == "none" else args.offline_split,
        device=args.device,
        env_tasks=env_tasks,
        max_steps=args.max_steps,
    )
    out = args.out or str(export.parent / "eval")
    report = run_evaluation(args.export, out, options)  # an s3:// export: each node caches its own copy

    loop = report["closed_loop"]
    print(f"closed loop on {loop['env']}: {loop['episodes']} episodes per policy")
    for name, result in loop["policies"].items():
        low, high = result["success_ci95"]
        failures = ", ".join(f"{count} {outcome}" for outcome, count in result["outcomes"].items()
                             if outcome != "success" and count)
        print(f"  {name:<9} success {result['success_rate']:6.1%}  (95% CI {low:.1%}-{high:.1%}, "
              f"mean steps {result['mean_steps']:.1f}); failures: {failures or 'none'}")
    if report["offline"]:
        off = report["offline"]
        dims = " ".join(f"{e:.3f}" for e in off["pose_error_per_dim_unnormalized"])
        gripper = f", gripper accuracy {off['gripper_accuracy']:.3f}" if "gripper_accuracy" in off else ""
        print(f"offline ({off['split']}, {off['windows']} windows): loss {off['loss']:.4f}, "
              f"error per continuous dim [{dims}]{gripper}")
    print(f"report: {report['files']['report']}")
    print(f"plot:   {report['files']['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
