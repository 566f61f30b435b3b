"""The evaluation report: its fields (documented in docs/evaluation.md) and the image strips
(its plot is ``vla.plots.plot_evaluation``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vla.eval.rollout import EpisodeResult

# Top-level fields of report.json and the fields of each part (docs/evaluation.md explains them).
REPORT_FIELDS = ("export", "created", "closed_loop", "offline", "calvin", "files", "timing_s")
CLOSED_LOOP_FIELDS = ("env", "tasks", "episodes", "seeds", "max_steps", "policies", "constant_action", "margin_over_baselines")
POLICY_FIELDS = ("success_rate", "success_ci95", "successes", "episodes", "mean_steps", "mean_steps_to_success",
                 "outcomes", "per_task")
OFFLINE_FIELDS = ("split", "windows", "steps", "loss", "loss_arm", "loss_gripper", "pose_error",
                  "pose_error_per_dim", "pose_error_per_dim_unnormalized", "pose_dims",
                  "gripper_accuracy")  # the last only where the action has binary grippers
FILES_FIELDS = ("report", "plot", "strips", "gifs")


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


def save_gif(result: EpisodeResult, path: Path, scale: int = 3, frame_ms: int = 80) -> Path:
    """One animated GIF per episode: the cameras side by side, every step."""
    frames = [np.concatenate([frame[camera] for camera in frame], axis=1) for frame in result.frames]
    height, width = frames[0].shape[:2]
    images = [Image.fromarray(f).resize((width * scale, height * scale), Image.NEAREST) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path


def save_rollouts(results: dict[str, list[EpisodeResult]], out_dir: Path) -> tuple[list[str], list[str]]:
    """Strips and GIFs of every recorded episode, named ``strip_<policy>_[<task>_]<seed>_<success|failure>.png``
    (and ``rollout_...gif``; the task named when the environment has several)."""
    strips, gifs = [], []
    for name, episodes in results.items():
        for result in episodes:
            if result.frames:
                task = f"{result.task}_" if len({r.task for r in episodes}) > 1 else ""
                stem = f"{name}_{task}{result.seed}_{'success' if result.success else 'failure'}"
                strips.append(str(save_strip(result, out_dir / f"strip_{stem}.png")))
                gifs.append(str(save_gif(result, out_dir / f"rollout_{stem}.gif")))
    return strips, gifs
