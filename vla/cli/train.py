"""Train a VLA policy with Ray Train + FSDP2.

    python pipelines/train.py                                  # the demo: synthetic data, tiny model, local Ray
    python pipelines/train.py --config configs/calvin_kosmos2.yaml train.lr=1e-4
    ray job submit --working-dir . -- python pipelines/train.py --config configs/NAME.yaml

With no RAY_ADDRESS a local Ray instance starts; with one, the run joins that cluster.
Re-running with the same run.name resumes from the run's newest intact checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from vla.config import load_config
from vla.typed_config import ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="YAML config file (default: configs/demo.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, start nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from vla.data import DataError
    from vla.train.launch import run_training  # imports Ray and torch: not needed for --dry-run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        result = run_training(cfg)  # config and data are checked before Ray starts or anything is written
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run folder:  {result.run_dir}")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"policy:      {result.export_dir}")
    print(f"final metrics: { {k: v for k, v in result.metrics.items() if isinstance(v, float)} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
