"""Run a sweep: every trial is one full distributed training run (``build_torch_trainer``).

Ray 2.60 runs Ray Train V2 inside Tune through a function trainable that builds and fits
a ``TorchTrainer`` with ``TuneReportCallback``; ``Tuner(TorchTrainer(...))`` is refused.
Concurrency comes from the resources a trial needs and the cluster has, so trials never
starve one another waiting for workers; a sweep whose driver died resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from vla.config import Config, resolve_config
from vla.ray_init import start_or_join_ray
from vla.storage import exists, normalize_path, read_bytes, run_path, write_bytes
from vla.train.config import TrainConfig
from vla.train.launch import build_torch_trainer, check_run, ensure_ray, total_steps_of, with_demo_data
from vla.tune.scoring import SweepReportCallback, finished_step
from vla.tune.space import PRESET_KEY, SearchSpace, apply_overrides, check_run_length

log = logging.getLogger("vla.tune")

TRIAL_DRIVER_CPU = 0.1  # the trial function itself only waits on its TorchTrainer
DATA_CPU_PER_TRIAL = 1.0  # kept free for each trial's decode tasks
RUNS_DIR = "runs"
DEFINITION_FILE = "sweep.yaml"  # what the sweep in a folder runs: compared before it is resumed
RESUMABLE_CHANGES = ("sweep.max_concurrent_trials", "sweep.wait_for_autoscaler")  # how, not what


class SweepError(RuntimeError):
    """The sweep cannot run as asked (e.g. a trial needs more than the cluster has)."""


@dataclass
class Sweep:
    name: str
    directory: str  # storage folder of the sweep: Tune's state, trial runs, results
    space: SearchSpace
    base: dict[str, Any]  # the base config as a dictionary


def trial_resources(train: TrainConfig, scores_closed_loop: bool = False) -> dict[str, float]:
    """What one trial takes from the cluster: its workers, its driver, room for its data tasks
    and, when trials are scored closed loop, for the scoring task."""
    need = {"CPU": train.num_workers * train.cpus_per_worker + TRIAL_DRIVER_CPU + DATA_CPU_PER_TRIAL}
    if train.use_gpu:
        need["GPU"] = float(train.num_workers)
    if scores_closed_loop:
        need["CPU"] += train.eval.cpus
        if train.eval.gpus:
            need["GPU"] = need.get("GPU", 0.0) + train.eval.gpus
    return need


def local_cpus(need: dict[str, float], cores: int) -> int:
    """Logical CPUs for a local Ray instance: the machine's cores, or one trial's need if more.

    A trial's driver and Train controller only wait, and its data tasks share the cores with
    the workers: on a 2-core machine the demo's trial (2 workers at 0.5 CPU, a driver, a data
    CPU, a scoring task) needs 2.6 logical CPUs, which is what its cores can carry.
    """
    return max(cores, math.ceil(need.get("CPU", 0.0)))


def start_ray(need: dict[str, float]) -> None:
    """Join the cluster at ``RAY_ADDRESS``; else start a local Ray instance one trial fits in."""
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        cpus = local_cpus(need, os.cpu_count() or 1)
        log.info("starting a local Ray instance with %d logical CPUs", cpus)
        start_or_join_ray(num_cpus=cpus, log_to_driver=True)
    ensure_ray()


def concurrent_trials(need: dict[str, float], available: dict[str, float], requested: int) -> int:
    """How many trials fit at once; a ``SweepError`` when not even one does."""
    fits = min(math.floor(available.get(key, 0.0) / amount) for key, amount in need.items())
    if fits < 1:
        raise SweepError(
            f"one trial needs {need} but the cluster has {available}: lower train.num_workers or "
            "train.cpus_per_worker, add nodes, or set sweep.wait_for_autoscaler with "
            "sweep.max_concurrent_trials on an autoscaling cluster"
        )
    return min(fits, requested) if requested else fits


def _distribution(param) -> Any:
    if param.kind == "loguniform":
        return tune.loguniform(*param.values)
    if param.kind == "uniform":
        return tune.uniform(*param.values)
    if param.kind == "choice":
        return tune.choice(param.values)
    return tune.grid_search(param.values)


def trial_config(sweep: Sweep, sample: dict[str, Any], trial_name: str) -> Config:
    """The full config of one trial: base + sampled overrides, its own run under the sweep."""
    data = apply_overrides(sweep.base, sweep.space.overrides_for(sample))
    data = apply_overrides(data, {"run.name": trial_name, "run.storage_path": f"{sweep.directory}/{RUNS_DIR}"})
    return resolve_config(data)


def _make_trainable(sweep: Sweep):
    settings = sweep.space.sweep

    def run_trial(sample: dict[str, Any]) -> None:
        cfg = trial_config(sweep, sample, tune.get_context().get_trial_name())
        run_dir = run_path(normalize_path(cfg.run.storage_path), cfg.run.name)
        # A trial re-run after its training had finished (e.g. the sweep's driver died before
        # Tune recorded it) resumes at the end and reports nothing new: report its result here.
        already_trained = finished_step(run_dir) >= total_steps_of(cfg)
        checked = check_run(cfg)  # the scores build the policy the run trains: the dataset's actions and state
        callback = SweepReportCallback(settings.metric, run_dir, checked.cfg, score=settings.scores_closed_loop)
        result = build_torch_trainer(cfg, callbacks=[callback], checked=checked).fit()
        if already_trained and result.checkpoint is not None:
            final = {**result.metrics, CHECKPOINT_PATH_KEY: result.checkpoint.path}
            if settings.scores_closed_loop:
                callback.score_now(int(result.metrics.get("step", 0)), result.checkpoint)
                final.update(callback.latest_score)
            tune.report(final)

    return run_trial


def _search_algorithm(space: SearchSpace):
    if space.sweep.search != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:
        raise SweepError("sweep.search: optuna needs the optuna package (pip install 'vla[optuna]')") from err
    if any(p.kind == "grid" for p in space.params):
        raise SweepError("sweep.search: optuna cannot sample grid params; use choice instead")
    return OptunaSearch(seed=space.sweep.seed)


def definition(sweep: Sweep) -> dict[str, Any]:
    """What makes two sweeps the same: the base config, the params, presets and sweep settings."""
    space = sweep.space
    return {
        "params": {p.key: {p.kind: p.values} for p in space.params},
        "presets": space.presets,
        "sweep": {k: v for k, v in asdict(space.sweep).items() if f"sweep.{k}" not in RESUMABLE_CHANGES},
        "base_config": sweep.base,
    }


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dictionaries as one ``{"a.b.c": leaf}`` dictionary."""
    if not isinstance(data, dict) or not data:
        return {prefix.rstrip("."): data}
    return {key: leaf for name, value in data.items() for key, leaf in _flatten(value, f"{prefix}{name}.").items()}


def check_same_sweep(sweep: Sweep) -> None:
    """A ``SweepError`` naming what differs when the folder holds a sweep defined otherwise.

    Resuming it would report the trials that sweep ran (or mix them with trials of this one).
    """
    path = f"{sweep.directory}/{DEFINITION_FILE}"
    if not exists(path):
        log.warning("%s has no %s (a sweep of an earlier version): resuming it unchecked", sweep.directory,
                    DEFINITION_FILE)
        return
    before = _flatten(yaml.safe_load(read_bytes(path)))
    now = _flatten(yaml.safe_load(yaml.safe_dump(definition(sweep))))  # the same types as the file's
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k, '<unset>')} -> {now.get(k, '<unset>')}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise SweepError(f"{sweep.directory} holds a sweep defined otherwise ({shown}{more}); re-run it as it was "
                         "to resume it, or give this one its own folder with --name")


def build_tuner(sweep: Sweep) -> tune.Tuner:
    """A new ``Tuner``, or the restored one when the sweep folder holds an interrupted sweep."""
    settings = sweep.space.sweep
    base_cfg = resolve_config(sweep.base)
    need = trial_resources(base_cfg.train, settings.scores_closed_loop)
    if settings.wait_for_autoscaler:
        concurrency = settings.max_concurrent_trials
    else:
        concurrency = concurrent_trials(need, ray.cluster_resources(), settings.max_concurrent_trials)
    trainable = tune.with_resources(_make_trainable(sweep), {"CPU": TRIAL_DRIVER_CPU})
    if tune.Tuner.can_restore(sweep.directory):
        log.info("resuming the sweep in %s", sweep.directory)
        return tune.Tuner.restore(sweep.directory, trainable, resume_errored=True)
    write_bytes(f"{sweep.directory}/{DEFINITION_FILE}", yaml.safe_dump(definition(sweep), sort_keys=False).encode())

    scheduler = None
    if settings.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="step",
            max_t=total_steps_of(base_cfg),
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    log.info("sweep %s: up to %d concurrent trial(s), each needing %s", sweep.name, concurrency, need)
    return tune.Tuner(
        trainable,
        param_space={p.key: _distribution(p) for p in sweep.space.params},
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            num_samples=settings.num_trials,
            max_concurrent_trials=concurrency,
            scheduler=scheduler,
            search_alg=_search_algorithm(sweep.space),
        ),
        run_config=tune.RunConfig(name=sweep.name, storage_path=sweep.directory.rsplit("/", 1)[0]),
    )


def make_sweep(name: str, space: SearchSpace, base_cfg: Config) -> Sweep:
    """The sweep ``name`` under ``run.storage_path`` (the demo dataset generated if asked for);
    a ``SweepError`` when that folder holds a sweep defined otherwise."""
    base_cfg = with_demo_data(base_cfg)
    check_run_length(space.sweep, base_cfg, total_steps_of(base_cfg))
    storage = normalize_path(base_cfg.run.storage_path)
    sweep = Sweep(name=name, directory=f"{storage.rstrip('/')}/{name}", space=space, base=base_cfg.to_dict())
    if tune.Tuner.can_restore(sweep.directory):
        check_same_sweep(sweep)
    return sweep


def run_sweep(sweep: Sweep) -> tune.ResultGrid:
    """Run (or resume) the sweep to the end; the caller writes the report."""
    start_ray(trial_resources(resolve_config(sweep.base).train, sweep.space.sweep.scores_closed_loop))
    if PRESET_KEY in {p.key for p in sweep.space.params}:
        log.info("presets: %s", ", ".join(sweep.space.presets))
    return build_tuner(sweep).fit()
