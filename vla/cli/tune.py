"""Sweep hyperparameters with Ray Tune: every trial is one full distributed training run.

    python pipelines/tune.py --space tune_spaces/default.yaml       # the demo's sweep, ~10 min on 2 cores
    python pipelines/tune.py --space tune_spaces/default.yaml sweep.num_trials=2 train.lr=1e-4
    python pipelines/tune.py --space tune_spaces/lr_gripper.yaml --config configs/calvin_kosmos2.yaml
    ray job submit --working-dir . -- python pipelines/tune.py --space tune_spaces/freeze.yaml

``key=value`` overrides the base config, ``sweep.key=value`` the sweep settings (over the
space's and the base config's ``sweep`` sections). Results land in <run.storage_path>/<name>:
trials.csv, best_config.yaml, sweep.png, summary.json, and each trial's run (checkpoints,
export) under runs/. Re-running the same command after the driver died resumes the sweep.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from vla.tune.space import load_sweep
from vla.typed_config import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", required=True, help="search space file (tune_spaces/NAME.yaml)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="base config file (default: configs/demo.yaml)")
    parser.add_argument("--name", help="sweep name (its folder under run.storage_path); default: the space's name")
    parser.add_argument("--dry-run", action="store_true", help="validate and print config and space, start nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides of the base config, or of the sweep settings (sweep.num_trials=2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        space, cfg = load_sweep(args.space, args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = args.name or f"sweep-{Path(args.space).stem}"
    if args.dry_run:
        resolved = {
            "name": name,
            "params": {p.key: {p.kind: p.values} for p in space.params},
            "presets": space.presets,
            "sweep": vars(space.sweep),
            "base_config": cfg.to_dict(),
        }
        print(yaml.safe_dump(resolved, sort_keys=False))
        return 0

    from vla.tune.report import format_table, write_report  # import Ray and torch: not for --dry-run
    from vla.tune.runner import SweepError, make_sweep, run_sweep

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        sweep = make_sweep(name, space, cfg)
        results = run_sweep(sweep)
    except (ConfigError, SweepError) as err:  # e.g. one trial needs more than the cluster has: before any trial starts
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = write_report(results, sweep)
    print(format_table(report.rows, space.sweep.metric, space.sweep.mode))
    print(f"sweep folder: {sweep.directory}")
    print(f"best config:  {report.best_config}")
    print(f"best policy:  {report.export_dir}")
    print(f"plot:         {report.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
