"""Serve a trained policy over HTTP (JSON or msgpack), one session per client.

    python pipelines/serve.py --export ~/vla_runs/demo/export [--host 127.0.0.1 --port 8000 --token SECRET]

Without --token, the token is read from VLA_SERVER_TOKEN when set (so it stays out of `ps`);
with neither, the server accepts every request: keep it on loopback or a private network.
See vla/policy/server.py for the routes and docs/reliability.md for what it refuses.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vla.policy.server import MAX_BODY_BYTES, PolicyServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="the policy export folder a training run wrote")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get("VLA_SERVER_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default: $VLA_SERVER_TOKEN)")
    parser.add_argument("--device", default="cpu", help="torch device of the policy (e.g. cuda)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY_BYTES / 2**20,
                        help="larger requests are refused unread (default %(default)s)")
    parser.add_argument("--read-timeout", type=float, default=10.0,
                        help="seconds a request body may take to arrive (default %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    export = Path(args.export).expanduser()
    if not (export / "config.yaml").is_file():
        print(f"error: --export {export}: not a policy export (no config.yaml)", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port: expected 0..65535, got {args.port}", file=sys.stderr)
        return 2
    from vla.policy import Policy  # imports torch: after the arguments are checked

    server = PolicyServer(Policy.load(export, device=args.device), args.host, args.port, token=args.token,
                          max_body_bytes=int(args.max_body_mb * 2**20), read_timeout_s=args.read_timeout)
    print(f"serving {export} at {server.url} ({'token required' if args.token else 'no token'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
