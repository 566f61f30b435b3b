"""The table ``benchmarks/gpu_ray.sh`` prints: the Ray path's own figures against ``gpu_step.py``'s.

    python -m benchmarks.gpu_ray_table --run RUN_DIR --step step.json [--full full.json]
        [--eval EVAL_DIR/report.json] [--device cuda]

Read from the run's ``metrics.jsonl`` (both legs, first and resumed): step time, windows/s and
data wait of every log window but the first of each leg (compilation), the checkpoint save,
persist and load times and size, and the export time. ``--step`` / ``--full``: the JSON of
``gpu_step.py --json`` for the same model and batch / at the published depth. ``Policy.act``
is timed here on ``--device`` on the run's export (one observation, the model's image size).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

from vla.policy import Policy
from vla.train.progress import METRICS_FILE, read_metrics

ACT_CALLS = 50


def steady_windows(records: list[dict]) -> list[dict]:
    """The log windows of both legs, less the first window of each (compilation, warm-up)."""
    windows, first_of_leg = [], True
    for record in records:
        if "checkpoint_load_s" in record:
            first_of_leg = True
        if "step_time_s" in record:
            if not first_of_leg:
                windows.append(record)
            first_of_leg = False
    return windows


def act_latency_ms(export: Path, device: str) -> list[float]:
    policy = Policy.load(export, device)
    rng = np.random.default_rng(0)
    size = policy.image_size
    observation = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in policy.cameras},
                   "instruction": "pick up the red block"}
    if policy.state_dim:
        observation["state"] = [0.0] * policy.state_dim
    for _ in range(3):
        policy.act(observation)  # the history fills, first-call costs paid
    times = []
    for _ in range(ACT_CALLS):
        start = time.perf_counter()
        policy.act(observation)  # returns a host array: the device has finished
        times.append((time.perf_counter() - start) * 1000)
    return times


def value(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def rows(args: argparse.Namespace) -> list[tuple[str, str]]:
    run = Path(args.run)
    records = read_metrics(run / METRICS_FILE)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    frames_per_window = cfg["model"]["window_size"]
    windows = steady_windows(records)
    if not windows:
        raise SystemExit(f"{run / METRICS_FILE}: no log window after the first of a leg (raise train.max_steps)")
    step = statistics.median(value(windows, "step_time_s"))
    wait = statistics.median(value(windows, "data_wait_s"))
    frames = statistics.median(value(windows, "samples_per_s")) * frames_per_window
    table = [("model", f"{cfg['model']['backbone']} from {cfg['model']['pretrained_path']}, "
                       f"{cfg['data']['batch_size']} windows x {frames_per_window} frames x {cfg['model']['num_views']} views"),
             ("step time, Ray path (s)", f"{step:.3f}  (median of {len(windows)} log windows)"),
             ("frames/s, Ray path", f"{frames:.1f}")]
    if args.step:
        bare = json.loads(Path(args.step).read_text())
        table += [("step time, gpu_step.py same model (s)", f"{bare['step_time_s']:.3f}"),
                  ("frames/s, gpu_step.py same model", f"{bare['frames_per_s']:.1f}"),
                  ("Ray path / gpu_step throughput", f"{bare['step_time_s'] / step:.3f}  (target >= 0.97)")]
    table.append(("data wait per step (s)", f"{wait:.4f}  ({100 * wait / step:.2f}% of the step; target < 2%)"))
    for key, label in (("checkpoint_save_s", "checkpoint save, every rank's shards (s)"),
                       ("checkpoint_report_s", "checkpoint persisted by Ray to storage (s)"),
                       ("checkpoint_gb", "checkpoint size (GB)"),
                       ("checkpoint_load_s", "checkpoint load at resume (s)"),
                       ("export_s", "export (s)")):
        found = value(records, key)
        table.append((label, ", ".join(f"{v:.2f}" for v in found) or "-"))
    if args.device:
        times = act_latency_ms(run / "export", args.device)
        p90 = statistics.quantiles(times, n=10)[-1]
        table.append((f"Policy.act on {args.device} (ms)", f"median {statistics.median(times):.1f}, p90 {p90:.1f}"))
    if args.eval:
        loop = json.loads(Path(args.eval).read_text())["closed_loop"]
        trained = loop["policies"]["trained"]
        table.append(("evaluate.py closed loop (trained)", f"{trained['success_rate']:.1%} of {loop['episodes']} episodes"))
    if args.full:
        full = json.loads(Path(args.full).read_text())
        table.append(("full depth, gpu_step.py: step (s), frames/s",
                      f"{full['step_time_s']:.3f}, {full['frames_per_s']:.1f}  ({full['params'] / 1e9:.2f}B parameters)"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run folder (<run.storage_path>/<run.name>)")
    parser.add_argument("--step", help="gpu_step.py --json of the same model and batch")
    parser.add_argument("--full", help="gpu_step.py --json at the published depth")
    parser.add_argument("--eval", help="pipelines/evaluate.py's report.json")
    parser.add_argument("--device", help="time Policy.act on this device (cpu or cuda)")
    args = parser.parse_args()
    table = rows(args)
    width = max(len(label) for label, _ in table)
    for label, text in table:
        print(f"{label:<{width}}  {text}")


if __name__ == "__main__":
    main()
