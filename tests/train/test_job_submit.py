"""`ray job submit` against a `ray start --head` cluster runs the training script to the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
GCS_PORT = 6391
DASHBOARD_PORT = 8272
# Every port of the second cluster differs from the session cluster's defaults.
PORTS = [
    f"--port={GCS_PORT}", f"--dashboard-port={DASHBOARD_PORT}", "--dashboard-agent-listen-port=52391",
    "--dashboard-agent-grpc-port=52392", "--metrics-export-port=52393", "--runtime-env-agent-port=52394",
    "--node-manager-port=52395", "--object-manager-port=52396",
]


def stop_cluster(temp_dir: Path) -> None:
    """Kill this head's processes (and their children) only; `ray stop` would kill every cluster."""
    heads = [p for p in psutil.process_iter(["cmdline"]) if any(str(temp_dir) in a for a in p.info["cmdline"] or [])]
    for proc in [child for p in heads for child in p.children(recursive=True)] + heads:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def submit(ray: list[str], args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the fresh head's job agent is still starting."""
    deadline = time.monotonic() + 90
    while True:
        job = subprocess.run([*ray, "job", "submit", *args], env=env, capture_output=True, text=True, timeout=360)
        if "No available agent" not in job.stderr or time.monotonic() > deadline:
            return job
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_job_submit_runs_train_py(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    temp_dir = Path("/tmp") / f"vla_job_{os.getpid()}"
    start = subprocess.run(
        [*ray, "start", "--head", *PORTS, "--num-cpus=4", "--include-dashboard=true",
         f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert start.returncode == 0, start.stderr
    try:
        overrides = tiny_run(tmp_path, "job") + ["train.max_steps=2"]
        job = submit(
            ray,
            [f"--address=http://127.0.0.1:{DASHBOARD_PORT}", "--working-dir", str(ROOT),
             "--", "python", "pipelines/train.py", *overrides],
            env,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        assert (tmp_path / "job" / "export" / "model.safetensors").is_file()
    finally:
        stop_cluster(temp_dir)
