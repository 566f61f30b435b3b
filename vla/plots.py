"""Every plot ``vla`` draws, as PNG files with labelled axes: a run's metrics against the step
(``metrics.png``), an evaluation's success rates (``results.png``) and a sweep's metric against
each swept parameter (``sweep.png``). Plain data in, a file out: no part of ``vla`` is imported."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SUCCESS_KEY = "eval_success_rate"  # closed-loop success in a run's metrics records
POLICY_COLOURS = ["tab:green", "tab:gray", "tab:orange"]  # trained, random, constant in every panel
STATUS_COLOURS = {"completed": "tab:green", "stopped early": "tab:orange", "error": "tab:red"}
ARM_POSE_DIMS = ("x", "y", "z", "roll", "pitch", "yaw")  # the 7-DOF arm's continuous dimensions


@contextmanager
def figure(out: Path, panels: int, panel_size: tuple[float, float]) -> Iterator[list]:
    """One row of ``panels`` axes, saved to ``out`` (100 dpi) and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(panel_size[0] * panels, panel_size[1]), squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)


def plot_run_metrics(records: list[dict[str, float]], out: Path) -> Path:
    """A run's ``metrics.png``: ``draw_run_metrics`` on two panels, three with evaluations."""
    with figure(out, 3 if any(SUCCESS_KEY in r for r in records) else 2, (5, 4)) as axes:
        draw_run_metrics(axes, records)
    return out


def draw_run_metrics(axes: list, records: list[dict[str, float]]) -> None:
    """Training and validation loss and pose error against the step; with evaluations during
    training, their offline metrics join those panels and the third panel shows closed-loop
    success, each at the step it scored."""
    panels = (("loss", ("loss", "val_loss", "eval_offline_loss")),
              ("pose error (normalized)", ("pose_error", "val_pose_error", "eval_offline_pose_error")))
    for ax, (label, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=key, marker=None if key in ("loss", "pose_error") else ".")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    if len(axes) > 2:
        draw_success(axes[2], records)


def draw_success(ax, records: list[dict[str, float]]) -> None:
    """Closed-loop success (with its 95% interval) against the step each record scored."""
    scored = sorted((r["step"], r) for r in records if SUCCESS_KEY in r)
    steps = [step for step, _ in scored]
    rates = [r[SUCCESS_KEY] for _, r in scored]
    low = [r[SUCCESS_KEY] - r["eval_success_ci_low"] for _, r in scored]
    high = [r["eval_success_ci_high"] - r[SUCCESS_KEY] for _, r in scored]
    ax.errorbar(steps, rates, yerr=[low, high], marker="o", capsize=3, label="closed-loop success (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("closed-loop success rate")
    ax.legend()
    ax.grid(alpha=0.3)


def dimension_labels(dims: list[int]) -> list[str]:
    """Axis labels of the continuous action dimensions ``dims``: the arm's pose names, else the indices."""
    return list(ARM_POSE_DIMS) if list(dims) == list(range(6)) else [f"dim {d}" for d in dims]


def plot_evaluation(closed_loop: dict, offline: dict | None, out: Path) -> Path:
    """Success rate per policy (95% intervals), per task when there are several, and, when
    measured, the offline per-dimension pose error (``report.json``'s parts)."""
    per_task = len(closed_loop["tasks"]) > 1
    with figure(out, 1 + bool(offline) + per_task, (5, 3.6)) as axes:
        names = list(closed_loop["policies"])
        rates = [closed_loop["policies"][n]["success_rate"] for n in names]
        low = [r - closed_loop["policies"][n]["success_ci95"][0] for n, r in zip(names, rates)]
        high = [closed_loop["policies"][n]["success_ci95"][1] - r for n, r in zip(names, rates)]
        axes[0].bar(names, rates, yerr=[low, high], capsize=4, color=POLICY_COLOURS[: len(names)])
        axes[0].set_ylim(0, 1)
        axes[0].set_ylabel("success rate")
        axes[0].set_title(f"{closed_loop['env']}: {closed_loop['episodes']} episodes per policy")
        if per_task:
            draw_per_task(axes[1], closed_loop)
        if offline:
            axes[-1].bar(dimension_labels(offline["pose_dims"]), offline["pose_error_per_dim_unnormalized"])
            axes[-1].set_ylabel("mean |error| (action units)")
            gripper = f": gripper accuracy {offline['gripper_accuracy']:.2f}" if "gripper_accuracy" in offline else ""
            axes[-1].set_title(f"offline ({offline['split']}){gripper}")
    return out


def draw_per_task(ax, closed_loop: dict) -> None:
    """Grouped bars: each policy's success rate on each task."""
    tasks, names = closed_loop["tasks"], list(closed_loop["policies"])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        rates = [closed_loop["policies"][name]["per_task"].get(task, {}).get("success_rate", 0.0) for task in tasks]
        colour = POLICY_COLOURS[k % len(POLICY_COLOURS)]
        ax.bar(np.arange(len(tasks)) + k * width, rates, width, label=name, color=colour)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    ax.set_title("per task")
    ax.legend(fontsize=8)


def plot_sweep(trials: Sequence[Any], params: Sequence[Any], metric: str, out: Path) -> Path:
    """One panel per swept parameter (``key``, ``kind``, ``values``): the ``metric`` of each trial
    (``params``, ``metric``, ``status``), coloured by status."""
    values = [t.metric for t in trials if t.metric is not None]
    log_metric = bool(values) and min(values) > 0 and max(values) > 10 * min(values)
    with figure(out, len(params), (4.5, 3.8)) as axes:
        for ax, param in zip(axes, params):
            categorical = param.kind in ("choice", "grid")
            labels = [str(v) for v in param.values] if categorical else []
            for status, colour in STATUS_COLOURS.items():
                points = [(t.params[param.key], t.metric) for t in trials
                          if t.status == status and t.metric is not None]
                if points:
                    xs = [labels.index(str(x)) if categorical else x for x, _ in points]
                    ax.scatter(xs, [y for _, y in points], c=colour, label=status)
            if categorical:
                ax.set_xticks(range(len(labels)), labels, rotation=20)
            elif param.kind == "loguniform":
                ax.set_xscale("log")
            if log_metric:
                ax.set_yscale("log")
            ax.set_xlabel(param.key)
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # no trial reported the metric: no legend
                ax.legend(fontsize=8)
    return out
