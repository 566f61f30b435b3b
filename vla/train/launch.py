"""Launch a training run on Ray: resolve the data, build the ``TorchTrainer``, fit, report.

``run_training(cfg)`` is what ``pipelines/train.py`` and every Tune trial call. Re-running
with the same ``run.name`` and ``run.storage_path`` resumes from the run's latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import yaml
from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from vla.config import Config
from vla.data import Normalization, build_window_stream, check_dataset, count_windows
from vla.data.converters.synthetic import convert_synthetic
from vla.data.metadata import METADATA_FILE
from vla.data.pipeline import DataSpec
from vla.model import build_tokenizer, run_image_size
from vla.model.export import RUN_CONFIG_FILE, run_files
from vla.ray_init import start_or_join_ray
from vla.storage import check_storage, exists, is_uri, normalize_path, read_bytes, run_path, upload, uri_of, write_bytes
from vla.train.checkpoint import set_aside_stale_ray_snapshot
from vla.train.config import TrainConfig
from vla.train.loop import EXPORT_DIR, train_loop_per_worker
from vla.typed_config import ConfigError, to_dict

log = logging.getLogger("vla.train")



@dataclass
class TrainingResult:
    run_dir: str
    checkpoint: str | None  # the latest checkpoint folder
    export_dir: str | None  # the consolidated policy export
    metrics: dict  # metrics of the last checkpointed report


def total_steps(cfg: Config, num_windows: int) -> int:
    """Optimizer steps of the run: ``train.max_steps``, else epochs x steps per epoch."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    per_epoch = cfg.train.steps_per_epoch or num_windows // (
        cfg.train.num_workers * cfg.data.batch_size * cfg.train.grad_accum_steps
    )
    if per_epoch < 1:
        raise ConfigError(
            f"data.path {cfg.data.path}: {num_windows} training windows make no full step of "
            f"{cfg.train.num_workers} workers x data.batch_size {cfg.data.batch_size} x "
            f"train.grad_accum_steps {cfg.train.grad_accum_steps}"
        )
    return cfg.train.epochs * per_epoch


def total_steps_of(cfg: Config) -> int:
    """``total_steps`` with the window count read from the dataset's metadata."""
    return total_steps(cfg, count_windows(cfg.data, cfg.data.train_split))


DEMO_DATA_DIR = "~/.cache/vla/synthetic"
DEMO_EPISODES = 1000  # more scenes, same steps: closed-loop success rises (docs/evaluation.md)
DEMO_ACTION_NOISE = 0.5  # DART demonstrations: 20% -> 31% closed loop at the same steps (docs/evaluation.md)


def with_demo_data(cfg: Config) -> Config:
    """An empty ``data.path`` means the demo: the synthetic task, generated once into a cache."""
    if cfg.data.path:
        return cfg
    name = f"{DEMO_DATA_DIR}-{cfg.model.image_size}px-{DEMO_EPISODES}ep-noise{DEMO_ACTION_NOISE}"
    root = os.path.expanduser(name)
    if not os.path.isfile(os.path.join(root, METADATA_FILE)):
        log.info("generating the synthetic demo dataset into %s", root)
        convert_synthetic(root, episodes=DEMO_EPISODES, image_size=cfg.model.image_size,
                          action_noise=DEMO_ACTION_NOISE)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=root))


def ensure_ray() -> None:
    """Join the cluster at ``RAY_ADDRESS`` if there is one, else start a local Ray instance."""
    start_or_join_ray(log_to_driver=True)


@dataclass
class CheckedRun:
    """What the driver checked before anything starts: nothing of it is written anywhere yet."""

    cfg: Config  # the run's config with the dataset's action space and state filled in (``with_data_spec``)
    normalization_json: str
    total_steps: int
    run_dir: str


def with_data_spec(cfg: Config, spec: DataSpec) -> Config:
    """``cfg`` whose model predicts the dataset's action space and reads its state (``model.action_dim``,
    ``model.binary_grippers``, ``model.state_dim``: the dataset decides them, whatever the config said)."""
    space = spec.action_space
    model = dataclasses.replace(cfg.model, action_dim=space.dim, binary_grippers=list(space.binary_grippers),
                                state_dim=spec.state_dim)
    model.validate()
    return dataclasses.replace(cfg, model=model)


def started_before_state(run_dir: str) -> bool:
    """Whether the run in ``run_dir`` was started by code that read no robot state (its saved
    ``config.yaml`` has no ``model.state_dim``): resuming it keeps the model it has."""
    saved = f"{run_dir}/{RUN_CONFIG_FILE}"
    if not exists(saved):
        return False
    model = (yaml.safe_load(read_bytes(saved)) or {}).get("model") or {}
    return "state_dim" not in model


def check_run(cfg: Config) -> CheckedRun:
    """Config, dataset metadata and every shard's footer and schema, checked on the driver with no
    Ray and no writes; raises ``ConfigError`` or ``DataError`` naming the file and field."""
    splits = [cfg.data.train_split] + ([cfg.data.val_split] if cfg.train.val_every else [])
    run_dir = run_path(normalize_path(cfg.run.storage_path), cfg.run.name)
    if cfg.model.use_state is None and started_before_state(run_dir):
        log.info("%s was started before the model read robot states: resuming it without", run_dir)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, use_state=False))
    spec = check_dataset(cfg.data, splits, cfg.model.use_state)
    log.info("data: actions %s; state: %s", spec.action_space.describe(),
             f"{spec.state_dim} values" if spec.state_dim else "not read")
    return CheckedRun(
        cfg=with_data_spec(cfg, spec),
        normalization_json=json.dumps(spec.normalization.to_dict(), indent=1),
        total_steps=total_steps(cfg, count_windows(cfg.data, cfg.data.train_split)),
        run_dir=run_dir,
    )


def write_run_files(run_dir: str, cfg: Config, normalization_json: str) -> None:
    """The full resolved config and the action statistics, saved with every run when it starts.

    An earlier attempt's different ``config.yaml`` is kept as ``config.attempt<N>.yaml``.
    """
    files = run_files(to_dict(cfg), json.loads(normalization_json))
    keep_earlier_config(run_dir, files[RUN_CONFIG_FILE].encode())
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            upload(Path(tmp) / name, f"{run_dir}/{name}")


def keep_earlier_config(run_dir: str, new_config: bytes) -> str | None:
    """Copy the run's current ``config.yaml`` to the next free ``config.attempt<N>.yaml`` unless
    it equals ``new_config``; returns the name it was kept under."""
    current = f"{run_dir}/{RUN_CONFIG_FILE}"
    if not exists(current):
        return None
    old = read_bytes(current)
    if old == new_config:
        return None
    attempt = 1
    while exists(f"{run_dir}/config.attempt{attempt}.yaml"):
        attempt += 1
    name = f"config.attempt{attempt}.yaml"
    write_bytes(f"{run_dir}/{name}", old)
    log.info("%s changed: the earlier attempt's config is kept as %s", current, name)
    return name


def tokenizer_directory(cfg: Config, run_dir: str) -> str:
    """The tokenizer folder the data tasks load: the pretrained one, or the tiny one saved with the run."""
    if cfg.model.pretrained_path is not None:
        return cfg.model.pretrained_path
    local = Path(tempfile.mkdtemp(prefix="vla_tokenizer_")) if is_uri(run_dir) else Path(run_dir) / "tokenizer"
    build_tokenizer(cfg.model).save_pretrained(str(local))
    return str(local)


def worker_count(train_cfg: TrainConfig) -> int | tuple[int, int]:
    """``num_workers``, or the elastic range ``(min_workers, num_workers)``."""
    if 0 < train_cfg.min_workers < train_cfg.num_workers:
        return (train_cfg.min_workers, train_cfg.num_workers)
    return train_cfg.num_workers


def build_torch_trainer(cfg: Config, callbacks: Sequence[UserCallback] = (),
                        checked: CheckedRun | None = None) -> TorchTrainer:
    """Everything Ray Train needs, built and checked on the driver before any worker starts.

    ``checked``: the result of ``check_run(cfg)`` when the caller already ran it.
    """
    checked = checked or check_run(cfg)
    cfg, run_dir, normalization_json = checked.cfg, checked.run_dir, checked.normalization_json
    storage_path = normalize_path(cfg.run.storage_path)
    write_run_files(run_dir, cfg, normalization_json)
    set_aside_stale_ray_snapshot(run_dir)
    tokenizer_dir = tokenizer_directory(cfg, run_dir)
    image_size = run_image_size(cfg.model)  # frames are resized once, to the size the model runs at

    normalization = Normalization.from_dict(json.loads(normalization_json))  # what the driver computed

    def windows(split: str, train: bool):
        return build_window_stream(
            cfg.data,
            split,
            window_size=cfg.model.window_size,
            fwd_pred_next_n=cfg.model.fwd_pred_next_n,
            image_size=image_size,
            tokenizer_dir=tokenizer_dir,
            train=train,
            normalization=normalization,
        )

    streams = {cfg.data.train_split: windows(cfg.data.train_split, train=True)}
    if cfg.train.val_every:
        streams[cfg.data.val_split] = windows(cfg.data.val_split, train=False)
    steps = checked.total_steps

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "run_dir": run_dir,
            "total_steps": steps,
            "normalization_json": normalization_json,
            "streams": streams,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=worker_count(cfg.train), use_gpu=cfg.train.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.train.max_failures, controller_failure_limit=cfg.train.worker_start_retries
            ),
            callbacks=list(callbacks),
        ),
    )


def run_training(cfg: Config) -> TrainingResult:
    """Train ``cfg`` to the end (or resume it there) and say where everything went."""
    check_storage(cfg.data.path, "data.path")  # empty for the demo, whose data is local
    check_storage(cfg.run.storage_path, "run.storage_path", writable=True)
    cfg = with_demo_data(cfg)
    checked = check_run(cfg)
    ensure_ray()
    trainer = build_torch_trainer(cfg, checked=checked)
    result = trainer.fit()
    run_dir = run_path(cfg.run.storage_path, cfg.run.name)
    checkpoint = result.checkpoint
    return TrainingResult(
        run_dir=run_dir,
        checkpoint=uri_of(checkpoint.filesystem, checkpoint.path) if checkpoint is not None else None,
        export_dir=f"{run_dir}/{EXPORT_DIR}" if cfg.run.export else None,
        metrics=dict(result.metrics or {}),
    )
