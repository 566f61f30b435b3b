"""Serve a trained policy to robots: a Ray Serve application speaking openpi's websocket protocol.

    python pipelines/serve.py --export ~/vla_runs/demo/export [--port 8000] [--replicas N] [--max-batch 32]

A robot then runs openpi's client unchanged: ``WebsocketClientPolicy(HOST, PORT)``.
Ray is local unless RAY_ADDRESS names a cluster (there ``serve deploy configs/serve/policy.yaml``
is the declarative way). With $VLA_API_KEY set, every connection needs
``Authorization: Api-Key <key>`` (openpi: ``WebsocketClientPolicy(HOST, PORT, api_key=KEY)``);
without it anyone who reaches the port can act: keep it on loopback or a private network.
The protocol and what is refused: vla/policy/server.py and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

API_KEY_ENV = "VLA_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="the policy export folder a training run wrote")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1, help="policy replicas (each one model copy)")
    parser.add_argument("--max-batch", type=int, default=32, help="observations per forward pass, at most")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="how long a batch waits for more observations (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device of each replica (cuda: one GPU each)")
    parser.add_argument("--max-frame-mb", type=float, default=8.0, help="larger observations are refused")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad argument ``ServeConfig`` does not check, as a one-line error."""
    export = Path(args.export).expanduser()
    if "://" not in args.export and not (export / "config.yaml").is_file():
        return f"--export {export}: not a policy export (no config.yaml)"
    if not 0 <= args.port <= 65535:
        return f"--port: expected 0..65535, got {args.port}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    error = check_args(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ray import serve  # after the arguments are checked

    from vla.policy.server import APP_NAME, build_app
    from vla.ray_init import start_or_join_ray
    from vla.typed_config import ConfigError

    api_key = os.environ.get(API_KEY_ENV)
    export = args.export if "://" in args.export else str(Path(args.export).expanduser().resolve())
    try:
        app = build_app({"export": export, "device": args.device, "replicas": args.replicas,
                         "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                         "max_frame_mb": args.max_frame_mb, "api_key_env": API_KEY_ENV if api_key else None})
    except ConfigError as err:  # named by its ServeConfig field: the flag of the same name
        key, _, message = str(err).partition(":")
        print(f"error: --{key.replace('_', '-')}:{message}", file=sys.stderr)
        return 2
    # The key reaches the replicas in their environment (never in the application's arguments).
    env = {API_KEY_ENV: api_key} if api_key else {}
    start_or_join_ray(runtime_env={"env_vars": env} if env else None)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name=APP_NAME, route_prefix="/")
    print(f"serving {export} at ws://{args.host}:{args.port}/ ({args.replicas} replica(s), "
          f"{'API key required' if api_key else 'no API key'}); Ctrl-C stops", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
