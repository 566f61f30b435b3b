"""Data wait when training streams its dataset from object storage, against local disk.

    python benchmarks/object_storage.py --steps 30 --episodes 60

Starts a local S3 server (moto) on loopback, writes the same synthetic dataset to local disk
and to ``s3://bench/vla-bench/data``, and trains the same run (``train_throughput.platform_run``: Ray
Train, FSDP2, the episode stream) three times: from local disk, from S3 read directly by the
decode tasks (``data.cache_remote=false``), and from S3 through the node-local shard cache
(``data.cache_remote=true``, the default, starting cold in a fresh ``$VLA_CACHE_DIR``). Prints
the data wait per step, the step time and their ratio (after the first 5 steps), and how
many requests for the training shards the server received during each run.
A real S3 bucket is farther away than loopback but also faster per request than moto: run
it against your bucket by exporting ``AWS_*`` and passing ``--bucket``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import platform_run, run_arguments

from vla.data.converters.synthetic import convert_synthetic


def parse_args() -> argparse.Namespace:
    parser = run_arguments(__doc__, steps=30, episodes=60)
    parser.add_argument("--bucket", help="an existing bucket to use instead of a local moto server")
    parser.set_defaults(gpu=False)
    return parser.parse_args()


def start_moto(log: Path) -> subprocess.Popen:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server


def shard_requests(log: Path, bucket: str) -> int:
    """Requests for the training shards (HEAD and ranged GETs) the server has logged so far."""
    pattern = re.compile(rf"(GET|HEAD) /{bucket}/vla-bench/data/train/")
    return len(pattern.findall(log.read_text())) if log.is_file() else 0


def main() -> None:
    args = parse_args()
    bucket = args.bucket or "bench"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "moto.log"
        server = None if args.bucket else start_moto(log)
        requests = {}
        try:
            os.environ["VLA_CACHE_DIR"] = f"{tmp}/cache"  # the cached run starts cold
            local, remote = f"{tmp}/data", f"s3://{bucket}/vla-bench/data"
            for data in (local, remote):
                convert_synthetic(data, episodes=args.episodes, val_episodes=4, image_size=args.image_size)
            runs = {}
            for where, data, cache in (("local disk", local, True), ("s3 direct", remote, False),
                                       ("s3 cached", remote, True)):
                before = shard_requests(log, bucket)
                runs[where] = platform_run(args, data, f"{tmp}/runs-{where.replace(' ', '-')}",
                                           [f"data.cache_remote={str(cache).lower()}"])
                requests[where] = shard_requests(log, bucket) - before if data == remote and server else None
        finally:
            if server is not None:
                server.terminate()
    print(f"\n{args.backbone} hidden {args.hidden} x {args.layers}, {args.batch} windows/worker, "
          f"{args.workers} workers, {args.steps} steps, {args.episodes} episodes of {args.image_size} px "
          f"({'moto on loopback' if server else bucket})")
    print(f"{'data from':>11} {'step (s)':>9} {'data wait (s)':>14} {'wait / step':>12} {'shard requests':>15}")
    for where, run in runs.items():
        print(f"{where:>11} {run['step_time_s']:9.3f} {run['data_wait_s']:14.3f} "
              f"{run['data_wait_s'] / run['step_time_s']:12.1%} {requests[where] if requests[where] is not None else '-':>15}")


if __name__ == "__main__":
    main()
