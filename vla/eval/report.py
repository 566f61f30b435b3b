"""The evaluation report: its fields (documented in docs/evaluation.md), the plot, the image strips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vla.eval.rollout import EpisodeResult

# Top-level fields of report.json and the fields of each part (docs/evaluation.md explains them).
REPORT_FIELDS = ("export", "created", "closed_loop", "offline", "calvin", "files", "timing_s")
CLOSED_LOOP_FIELDS = ("env", "episodes", "seeds", "max_steps", "policies", "constant_action", "margin_over_baselines")
POLICY_FIELDS = ("success_rate", "success_ci95", "successes", "episodes", "mean_steps", "mean_steps_to_success",
                 "outcomes")
OFFLINE_FIELDS = ("split", "windows", "steps", "loss", "loss_arm", "loss_gripper", "pose_error",
                  "pose_error_per_dim", "pose_error_per_dim_unnormalized", "pose_dims",
                  "gripper_accuracy")  # the last only where the action has binary grippers
FILES_FIELDS = ("report", "plot", "strips")
ARM_POSE_DIMS = ("x", "y", "z", "roll", "pitch", "yaw")  # the 7-DOF arm's continuous dimensions


def dimension_labels(dims: list[int]) -> list[str]:
    """Axis labels of the continuous action dimensions ``dims``: the arm's pose names, else the indices."""
    return list(ARM_POSE_DIMS) if list(dims) == list(range(6)) else [f"dim {d}" for d in dims]


def write_report(report: dict, out_dir: Path) -> Path:
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def save_strip(result: EpisodeResult, path: Path, every: int = 2, scale: int = 3) -> Path:
    """One PNG per episode: a row per camera, every ``every``-th frame, last frame always shown."""
    keep = sorted(set(range(0, len(result.frames), every)) | {len(result.frames) - 1})
    rows = []
    for camera in result.frames[0]:
        frames = [result.frames[i][camera] for i in keep]
        gap = np.full((frames[0].shape[0], 1, 3), 255, np.uint8)
        rows.append(np.concatenate([part for frame in frames for part in (frame, gap)][:-1], axis=1))
    strip = np.concatenate(rows, axis=0)
    image = Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST)
    image.save(path)
    return path


def save_strips(results: dict[str, list[EpisodeResult]], out_dir: Path) -> list[str]:
    """Strips of every recorded episode, named ``strip_<policy>_<seed>_<success|failure>.png``."""
    paths = []
    for name, episodes in results.items():
        for result in episodes:
            if result.frames:
                outcome = "success" if result.success else "failure"
                paths.append(str(save_strip(result, out_dir / f"strip_{name}_{result.seed}_{outcome}.png")))
    return paths


def plot_results(closed_loop: dict, offline: dict | None, path: Path) -> Path:
    """Success rate per policy (95% intervals) and, when measured, the offline per-dimension pose error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if offline else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    names = list(closed_loop["policies"])
    rates = [closed_loop["policies"][n]["success_rate"] for n in names]
    low = [r - closed_loop["policies"][n]["success_ci95"][0] for n, r in zip(names, rates)]
    high = [closed_loop["policies"][n]["success_ci95"][1] - r for n, r in zip(names, rates)]
    ax = axes[0][0]
    ax.bar(names, rates, yerr=[low, high], capsize=4, color=["tab:green", "tab:gray", "tab:orange"][: len(names)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate")
    ax.set_title(f"{closed_loop['env']}: {closed_loop['episodes']} episodes per policy")
    if offline:
        ax = axes[0][1]
        ax.bar(dimension_labels(offline["pose_dims"]), offline["pose_error_per_dim_unnormalized"])
        ax.set_ylabel("mean |error| (action units)")
        gripper = f": gripper accuracy {offline['gripper_accuracy']:.2f}" if "gripper_accuracy" in offline else ""
        ax.set_title(f"offline ({offline['split']}){gripper}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
