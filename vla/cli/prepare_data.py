"""Convert robot episodes into the Parquet format, or validate a dataset.

    python pipelines/prepare_data.py synthetic OUT [--episodes 200 --val-episodes 20 --seed 0 --image-size 32 --action-noise 0 --hide-gripper]
    python pipelines/prepare_data.py calvin CALVIN_DIR OUT [--image-encoding png|jpeg]
    python pipelines/prepare_data.py lerobot LEROBOT_DIR OUT [--camera static=observation.images.top ...] [--gripper 5:open_fraction ...]
    python pipelines/prepare_data.py metaworld OUT --tasks reach-v3,push-v3|MT10|MT50 --episodes-per-task N
                                     [--image-size 64 --action-noise S --val-episodes-per-task 2 --seed 0]
    python pipelines/prepare_data.py validate ROOT

``--parallel N`` runs a converter as N Ray tasks (a local Ray starts unless RAY_ADDRESS is set).
"""

from __future__ import annotations

import argparse
import logging
import sys

from vla.action_space import CONTINUOUS, GRIPPER_CONVENTIONS, GripperError, parse_gripper
from vla.data import DataError, validate_dataset
from vla.data.converters.calvin import convert_calvin
from vla.data.converters.lerobot import DEFAULT_STATE_KEY, convert_lerobot
from vla.data.converters.metaworld import MetaWorldData, convert_metaworld, parse_tasks
from vla.data.converters.synthetic import convert_synthetic


def camera_mapping(text: str) -> tuple[str, str]:
    name, sep, key = text.partition("=")
    if not (sep and name and key):
        raise argparse.ArgumentTypeError(f"expected NAME=FEATURE (e.g. static=observation.images.top), got {text!r}")
    return name, key


def gripper_declaration(text: str) -> str:
    try:
        parse_gripper(text)
    except GripperError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    synthetic = sub.add_parser("synthetic", help="demonstrations of the built-in synthetic task")
    synthetic.add_argument("out")
    synthetic.add_argument("--episodes", type=int, default=200)
    synthetic.add_argument("--val-episodes", type=int, default=20)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--image-size", type=int, default=32)
    synthetic.add_argument("--action-noise", type=float, default=0.0,
                           help="std of the noise added to the executed motion (DART); the expert's action is recorded")
    synthetic.add_argument("--hide-gripper", action="store_true",
                           help="the hidden-state variant: the gripper is only in the robot state, not in the images")

    calvin = sub.add_parser("calvin", help="a CALVIN split folder (training/ and validation/)")
    calvin.add_argument("source")
    calvin.add_argument("out")
    calvin.add_argument("--image-encoding", choices=["png", "jpeg"], default="png")

    lerobot = sub.add_parser("lerobot", help="a LeRobot dataset folder (v2.x or v3.0 layout)")
    lerobot.add_argument("source")
    lerobot.add_argument("out")
    lerobot.add_argument("--camera", type=camera_mapping, action="append", metavar="NAME=FEATURE",
                         help="our camera name and the LeRobot image/video feature it reads, repeated per camera "
                              "(default: the first two camera features as static and wrist)")
    lerobot.add_argument("--action-key", default="action", help="the action feature, any length (default %(default)s)")
    lerobot.add_argument("--state-key", default=DEFAULT_STATE_KEY,
                         help="the state feature (default %(default)s, used when the dataset has it)")
    lerobot.add_argument("--gripper", type=gripper_declaration, action="append", default=[], metavar="INDEX:CONVENTION",
                         help="declare action dimension INDEX a gripper, repeated per gripper (none by default). "
                              "Binary conventions map it to -1 close / +1 open: "
                              + "; ".join(f"{k}: {v}" for k, v in GRIPPER_CONVENTIONS.items())
                              + f"; {CONTINUOUS}: regressed like the other dimensions")
    lerobot.add_argument("--val-episodes", type=int, help="the last K episodes go to val (beats info.json splits)")
    lerobot.add_argument("--val-fraction", type=float, default=0.1,
                         help="the last round(F * episodes) go to val, when info.json names no val/test range")
    lerobot.add_argument("--image-encoding", choices=["png", "jpeg"], default="png")

    metaworld = sub.add_parser("metaworld", help="MetaWorld demonstrations by its scripted experts (needs .[metaworld])")
    metaworld.add_argument("out")
    metaworld.add_argument("--tasks", required=True, help="task names (reach-v3,push-v3), MT10 or MT50")
    metaworld.add_argument("--episodes-per-task", type=int, required=True, help="training demonstrations per task")
    metaworld.add_argument("--val-episodes-per-task", type=int, default=2)
    metaworld.add_argument("--seed", type=int, default=0, help="first scene seed of every task")
    metaworld.add_argument("--image-size", type=int, default=64, help="square camera images (default %(default)s)")
    metaworld.add_argument("--action-noise", type=float, default=0.0,
                           help="std of the noise added to the executed dx, dy, dz (DART); the expert's action is recorded")
    metaworld.add_argument("--max-attempts", type=int, default=3,
                           help="scenes tried per demonstration before the slot is given up (default %(default)s)")

    for converter in (synthetic, calvin, lerobot, metaworld):
        converter.add_argument("--parallel", type=int, default=0, help="Ray tasks (0: in this process)")
        converter.add_argument("--max-shard-mb", type=int, default=256)

    validate = sub.add_parser("validate", help="check a whole dataset and list every problem")
    validate.add_argument("root")
    validate.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log = logging.getLogger("prepare_data")
    if args.command == "validate":
        problems = validate_dataset(args.root, decode_images=not args.no_decode)
        for problem in problems:
            log.error("%s", problem)
        log.info("%s: %s", args.root, f"{len(problems)} problem(s)" if problems else "OK")
        return 1 if problems else 0
    shard_bytes = args.max_shard_mb << 20
    try:
        if args.command == "synthetic":
            meta = convert_synthetic(args.out, episodes=args.episodes, val_episodes=args.val_episodes,
                                     seed=args.seed, image_size=args.image_size, parallel=args.parallel,
                                     action_noise=args.action_noise, max_shard_bytes=shard_bytes,
                                     show_gripper=not args.hide_gripper)
        elif args.command == "calvin":
            meta = convert_calvin(args.source, args.out, parallel=args.parallel,
                                  image_encoding=args.image_encoding, max_shard_bytes=shard_bytes)
        elif args.command == "metaworld":
            data = MetaWorldData(parse_tasks(args.tasks), args.episodes_per_task, args.val_episodes_per_task,
                                 args.seed, args.image_size, args.action_noise, args.max_attempts)
            meta, _ = convert_metaworld(args.out, data, parallel=args.parallel, max_shard_bytes=shard_bytes)
        else:
            meta = convert_lerobot(args.source, args.out, cameras=dict(args.camera) if args.camera else None,
                                   action_key=args.action_key, state_key=args.state_key, grippers=args.gripper,
                                   val_episodes=args.val_episodes, val_fraction=args.val_fraction,
                                   parallel=args.parallel, image_encoding=args.image_encoding,
                                   max_shard_bytes=shard_bytes)
    except DataError as err:
        log.error("%s", err)
        return 1
    log.info("actions: %s; state: %s", meta.action_space.describe(), meta.state_dim or "none")
    for name, split in meta.splits.items():
        log.info("%s: %d episodes, %d steps, %d shard(s)", name, split.episodes, split.steps, len(split.shards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
