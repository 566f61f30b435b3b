"""What a finished sweep leaves in its folder.

    trials.csv         one row per trial: sampled values, metric, val_loss and closed-loop
                       success (when reported), steps run, status, checkpoint
    best_config.yaml   the best trial's full config, ready for ``pipelines/train.py --config``
    sweep.png          the metric against each swept parameter
    summary.json       the best trial, its metric, checkpoint and export, and how far
                       val_loss and closed-loop success agree across trials
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from vla.config import resolve_config
from vla.model.export import RUN_CONFIG_FILE
from vla.plots import plot_sweep
from vla.storage import exists, read_bytes, with_scheme_of, write_bytes
from vla.train.launch import total_steps_of
from vla.train.loop import EXPORT_DIR
from vla.tune.runner import Sweep
from vla.typed_config import to_dict

log = logging.getLogger("vla.tune")

COMPARED = ("val_loss", "eval_success_rate")  # the offline and the closed-loop score of a trial


@dataclass
class TrialRow:
    trial: str
    params: dict[str, Any]
    metric: float | None
    scores: dict[str, float | None]  # COMPARED metrics at the trial's last report
    steps: int
    status: str  # completed, stopped early, error
    trainable_params: int | None
    checkpoint: str | None
    run_dir: str | None


@dataclass
class SweepReport:
    rows: list[TrialRow]
    best: TrialRow | None
    best_config: str | None
    export_dir: str | None
    plot: str | None
    agreement: dict[str, Any] | None  # rank correlation of val_loss and closed-loop success


def trial_rows(results: tune.ResultGrid, sweep: Sweep, max_steps: int) -> list[TrialRow]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        checkpoint = with_scheme_of(sweep.directory, metrics.get("checkpoint_path"))  # Ray reports bucket/key
        steps = int(metrics.get("step", 0))
        if result.error is not None:
            status = "error"
        else:
            status = "completed" if steps >= max_steps else "stopped early"
        rows.append(
            TrialRow(
                trial=Path(result.path).name,
                params={key: result.config.get(key) for key in (p.key for p in sweep.space.params)},
                metric=metrics.get(sweep.space.sweep.metric),
                scores={key: metrics.get(key) for key in COMPARED},
                steps=steps,
                status=status,
                trainable_params=metrics.get("trainable_params"),
                checkpoint=checkpoint,
                run_dir=checkpoint.rsplit("/", 1)[0] if checkpoint else None,
            )
        )
    return rows


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            result[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation; None when either side has no spread."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    if not sx or not sy:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / (sx * sy)


def agreement(rows: list[TrialRow]) -> dict[str, Any] | None:
    """How far the offline and the closed-loop score rank the trials alike: Spearman's
    correlation of -val_loss and success (1: same order) over trials that reported both."""
    both = [r for r in rows if all(r.scores.get(key) is not None for key in COMPARED)]
    if len(both) < 2:
        return None
    rho = spearman([-r.scores["val_loss"] for r in both], [r.scores["eval_success_rate"] for r in both])
    return {"metrics": list(COMPARED), "trials": len(both), "spearman": rho}


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    """The best trial among those that ran to the end (they have an export and comparable
    metrics: a trial stopped early was scored at an earlier step); any trial if none did."""
    scored = [r for r in rows if r.metric is not None and r.status != "error"]
    finished = [r for r in scored if r.status == "completed"]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(finished or scored, key=lambda r: r.metric)


def write_best_config(best: TrialRow, sweep: Sweep) -> str:
    """The best trial's resolved config, renamed so training it again starts a fresh run."""
    data = yaml.safe_load(read_bytes(f"{best.run_dir}/{RUN_CONFIG_FILE}"))
    data["run"]["name"] = f"{sweep.name}-best"
    data["run"]["storage_path"] = sweep.base["run"]["storage_path"]
    cfg = resolve_config(data)
    path = f"{sweep.directory}/best_config.yaml"
    write_bytes(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    return path


def shown_scores(rows: list[TrialRow], metric: str) -> list[str]:
    """The COMPARED metrics some trial reported, other than the sweep's metric."""
    return [key for key in COMPARED if key != metric and any(r.scores.get(key) is not None for r in rows)]


def format_table(rows: list[TrialRow], metric: str, mode: str = "min") -> str:
    """The trials as an aligned text table, best first, with the other score and how far they agree."""
    keys = list(rows[0].params) if rows else []
    others = shown_scores(rows, metric)
    header = ["trial", *keys, metric, *others, "steps", "status", "trainable"]
    lines = [header]
    sign = 1 if mode == "min" else -1
    for r in sorted(rows, key=lambda r: (r.metric is None, sign * r.metric if r.metric is not None else 0)):
        values = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.params.values()]
        scores = [f"{v:.4f}" if v is not None else "-" for v in (r.metric, *(r.scores[k] for k in others))]
        lines.append([r.trial[:28], *values, *scores, str(r.steps), r.status, str(r.trainable_params)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines)
    agree = agreement(rows)
    if agree is not None:
        rho = agree["spearman"]
        rho = "undefined (one of them is the same for every trial)" if rho is None else f"{rho:+.2f}"
        table += f"\nrank agreement of val_loss and closed-loop success over {agree['trials']} trials (Spearman): {rho}"
    return table


def write_report(results: tune.ResultGrid, sweep: Sweep) -> SweepReport:
    rows = trial_rows(results, sweep, total_steps_of(resolve_config(sweep.base)))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = [p.key for p in sweep.space.params]
    others = shown_scores(rows, sweep.space.sweep.metric)
    writer.writerow(["trial", *keys, sweep.space.sweep.metric, *others, "steps", "status", "trainable_params",
                     "checkpoint"])
    for r in rows:
        writer.writerow([r.trial, *(r.params[k] for k in keys), r.metric, *(r.scores[k] for k in others), r.steps,
                         r.status, r.trainable_params, r.checkpoint])
    write_bytes(f"{sweep.directory}/trials.csv", buffer.getvalue().encode())

    best = best_row(rows, sweep.space.sweep.mode)
    best_config = write_best_config(best, sweep) if best is not None and best.run_dir else None
    export_dir = f"{best.run_dir}/{EXPORT_DIR}" if best is not None and best.run_dir else None
    if export_dir is not None and not exists(export_dir):
        export_dir = None

    with tempfile.TemporaryDirectory() as tmp:
        plot = plot_sweep(rows, sweep.space.params, sweep.space.sweep.metric, Path(tmp) / "sweep.png")
        write_bytes(f"{sweep.directory}/sweep.png", plot.read_bytes())
    agree = agreement(rows)
    report = SweepReport(rows=rows, best=best, best_config=best_config, export_dir=export_dir,
                         plot=f"{sweep.directory}/sweep.png", agreement=agree)
    summary = {"best": asdict(best) if best else None, "best_config": best_config, "export_dir": export_dir,
               "agreement": agree}
    write_bytes(f"{sweep.directory}/summary.json", json.dumps(summary, indent=1, default=str).encode())
    return report
