"""Search spaces: YAML files in ``tune_spaces/`` naming config keys with distributions.

    params:                       # dotted config keys -> one distribution each
      train.lr: {loguniform: [1.0e-5, 1.0e-3]}
      model.lambda_gripper: {uniform: [0.001, 0.1]}
      preset: {grid: [full, frozen_backbone]}   # "preset" picks one of the named presets
    presets:                      # named bundles of config overrides
      full: {model.freeze_backbone: false}
      frozen_backbone: {model.freeze_backbone: true}
    sweep:                        # how the sweep runs (SweepSettings)
      num_trials: 8
      scheduler: asha

The sweep settings come from the space's ``sweep`` section, then the base config's own
``sweep`` section (how that config is swept: the demo sizes its sweep for 2 cores), then
``sweep.key=value`` on the command line. ``sweep.trial`` holds config overrides every trial
gets (e.g. a shorter ``train.max_steps``); ``key=value`` config overrides on the command line
win over it.

Everything is checked against the real config before a trial starts: an unknown key, a
bad range or an unknown preset, a metric the trials never report, a grace period longer
than the run is a ``ConfigError`` that names it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vla.typed_config import ConfigError, check, from_dict, load_yaml, parse_override, set_dotted

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")
PRESET_KEY = "preset"
SWEEP_PREFIX = "sweep."
# What every trial reports (vla.train.loop), what validation adds, what closed-loop scoring adds
LOSS_TERMS = ("loss", "loss_arm", "loss_gripper", "pose_error", "gripper_accuracy")
TRAINING_METRICS = (*LOSS_TERMS, "lr", "grad_norm", "step", "epoch")
VALIDATION_METRICS = tuple(f"val_{term}" for term in LOSS_TERMS)
CLOSED_LOOP_METRICS = ("eval_success_rate", "eval_success_ci_low", "eval_success_ci_high", "eval_mean_steps")
MAXIMIZED = ("eval_success_rate", "eval_success_ci_low", "eval_success_ci_high", "gripper_accuracy",
             "val_gripper_accuracy")


@dataclass
class SweepSettings:
    num_trials: int = 4  # samples drawn; with grid params, each sample repeats the whole grid
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = 2  # ASHA: optimizer steps before a trial may be stopped
    reduction_factor: int = 2  # ASHA: keep 1/reduction_factor of the trials at each rung
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources hold
    wait_for_autoscaler: bool = False  # trust an autoscaling cluster to grow for the trials
    seed: int = 0
    # Score every checkpointed report by closed-loop success in the training data's environment
    # (train.eval.episodes episodes, a Ray task beside the trial's workers) as eval_success_rate;
    # always on when that is the metric
    closed_loop: bool = False
    trial: dict[str, Any] = field(default_factory=dict)  # config overrides (dotted keys) every trial gets

    @property
    def scores_closed_loop(self) -> bool:
        return self.closed_loop or self.metric in CLOSED_LOOP_METRICS

    def validate(self) -> None:
        check(self.num_trials >= 1, "num_trials", "must be >= 1")
        check(bool(self.metric), "metric", "must name a reported metric")
        check(self.grace_period >= 1, "grace_period", "must be >= 1")
        check(self.reduction_factor >= 2, "reduction_factor", "must be >= 2")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials", "must be >= 0")
        check(
            not self.wait_for_autoscaler or self.max_concurrent_trials > 0,
            "max_concurrent_trials",
            "must be set (> 0) when wait_for_autoscaler is true",
        )
        check(
            self.metric not in MAXIMIZED or self.mode == "max",
            "mode",
            f"{self.metric} is better when higher: use mode: max",
        )


@dataclass
class Param:
    key: str  # dotted config key, or "preset"
    kind: str  # one of DISTRIBUTIONS
    values: list[Any]  # [low, high] for (log)uniform, the options for choice/grid


@dataclass
class SearchSpace:
    params: list[Param]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: SweepSettings = field(default_factory=SweepSettings)

    def overrides_for(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Config overrides (dotted key -> value) of one sampled point, presets expanded."""
        overrides: dict[str, Any] = {}
        for key, value in sample.items():
            if key == PRESET_KEY:
                overrides.update(self.presets[value])
            else:
                overrides[key] = value
        return overrides


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config dictionary ``base`` with dotted ``overrides`` set."""
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(data, key, value)
    return data


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"params.{key}{where}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    ((kind, values),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"params.{key}{where}: unknown distribution {kind!r} (known: {', '.join(DISTRIBUTIONS)})")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"params.{key}{where}: {kind} needs a non-empty list")
    if kind in ("loguniform", "uniform"):
        try:
            low, high = (float(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f"params.{key}{where}: {kind} needs [low, high] numbers, got {values!r}") from None
        if not low < high:
            raise ConfigError(f"params.{key}{where}: {kind} needs low < high, got {values!r}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"params.{key}{where}: loguniform needs low > 0, got {values!r}")
        values = [low, high]
    return Param(key=key, kind=kind, values=values)


def _check_against_config(space: SearchSpace, base: dict[str, Any], where: str) -> None:
    """Resolve the base config with every value a param or preset can take: bad keys fail here."""
    from vla.config import resolve_config

    for param in space.params:
        options = space.presets if param.key == PRESET_KEY else None
        for value in param.values:
            if options is not None:
                if value not in options:
                    raise ConfigError(
                        f"params.preset{where}: unknown preset {value!r} (defined: {', '.join(options) or 'none'})"
                    )
                overrides = options[value]
            else:
                overrides = {param.key: value}
            try:
                resolve_config(apply_overrides(base, overrides))
            except ConfigError as err:
                raise ConfigError(f"params.{param.key}{where}: {err}") from None


def reported_metrics(cfg, settings: SweepSettings) -> dict[str, str]:
    """Metric name -> why a trial of ``cfg`` reports it ('' when it does, else what is missing)."""
    val = "" if cfg.train.val_every else "train.val_every is 0, so the trials never validate (set train.val_every=K)"
    closed_loop = "" if cfg.train.eval.episodes else "train.eval.episodes is 0, so closed-loop scoring runs no episode"
    if not settings.scores_closed_loop:
        closed_loop = "closed-loop scoring is off (set sweep.closed_loop=true)"
    return {**{m: "" for m in TRAINING_METRICS}, **{m: val for m in VALIDATION_METRICS},
            **{m: closed_loop for m in CLOSED_LOOP_METRICS}}


def check_metric(settings: SweepSettings, cfg) -> None:
    """The metric is one the trials report, before any trial starts."""
    reported = reported_metrics(cfg, settings)
    if settings.metric not in reported:
        raise ConfigError(
            f"sweep.metric: {settings.metric!r} is not a metric the trials report "
            f"(they report: {', '.join(reported)})"
        )
    if reported[settings.metric]:
        raise ConfigError(f"sweep.metric: the trials never report {settings.metric}: {reported[settings.metric]}")
    if settings.scores_closed_loop and settings.scheduler == "asha" and not cfg.train.checkpoint_every:
        raise ConfigError(
            "sweep.closed_loop: closed-loop scores come with checkpoints, and train.checkpoint_every is 0: "
            "ASHA would only see the final score (set train.checkpoint_every=K)"
        )


def check_run_length(settings: SweepSettings, cfg, total_steps: int) -> None:
    """ASHA's grace period and the metric's first report fit in the trial's ``total_steps``."""
    if settings.scheduler == "asha" and settings.grace_period > total_steps:
        raise ConfigError(
            f"sweep.grace_period: {settings.grace_period} steps is longer than a trial's run "
            f"({total_steps} steps): lower it or lengthen the run"
        )
    if settings.metric in VALIDATION_METRICS and cfg.train.val_every > total_steps:
        raise ConfigError(
            f"train.val_every: {cfg.train.val_every} is longer than a trial's run ({total_steps} steps): "
            f"{settings.metric} would never be reported"
        )


def sweep_settings(space_sweep: dict[str, Any], config_sweep: dict[str, Any], overrides: list[str]) -> SweepSettings:
    """The space's sweep section, then the base config's, then ``sweep.key=value`` overrides."""
    data = {**space_sweep, **config_sweep}
    for text in overrides:
        key, value = parse_override(text)
        data[key.removeprefix(SWEEP_PREFIX)] = value
    return from_dict(SweepSettings, data, prefix=SWEEP_PREFIX)


def parse_space(data: dict[str, Any], base: dict[str, Any], where: str = "",
                sweep_overrides: list[str] = ()) -> SearchSpace:
    """Build and check a ``SearchSpace`` from the mapping of a space file, against the config
    dictionary ``base`` every trial starts from (its ``sweep.trial`` overrides already applied)."""
    from vla.config import resolve_config

    unknown = sorted(set(data) - {"params", "presets", "sweep"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}{where} (known: params, presets, sweep)")
    params_data = data.get("params") or {}
    if not isinstance(params_data, dict) or not params_data:
        raise ConfigError(f"params{where}: a space needs at least one parameter")
    presets = data.get("presets") or {}
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ConfigError(f"presets{where}: expected a mapping of name -> {{config.key: value}}")
    if PRESET_KEY in params_data and not presets:
        raise ConfigError(f"params.preset{where}: the space defines no presets")
    sweep = sweep_settings(data.get("sweep") or {}, base.get("sweep") or {}, list(sweep_overrides))
    space = SearchSpace(
        params=[_parse_param(key, spec, where) for key, spec in params_data.items()], presets=presets, sweep=sweep
    )
    _check_against_config(space, base, where)
    cfg = resolve_config(base)
    check_metric(sweep, cfg)
    if cfg.train.max_steps:
        check_run_length(sweep, cfg, cfg.train.max_steps)
    return space


def load_space(path: str | Path, base: dict[str, Any], sweep_overrides: list[str] = ()) -> SearchSpace:
    """Read and check the space file ``path`` against the base config dictionary ``base``."""
    try:
        return parse_space(load_yaml(path), base, where=f" (in {path})", sweep_overrides=sweep_overrides)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if str(path) in message else f"{message} (in {path})") from None


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Command-line ``key=value`` overrides -> (config overrides, ``sweep.*`` overrides)."""
    sweep = [o for o in overrides if o.strip().startswith(SWEEP_PREFIX)]
    return [o for o in overrides if o not in sweep], sweep


def load_sweep(space_path: str | Path, config_path: str | Path | None, overrides: list[str] = ()):
    """The checked ``(SearchSpace, base Config)`` of a sweep command line: the base config file
    with the sweep's ``trial`` overrides, then the command line's config overrides, applied."""
    from vla.config import load_config, resolve_config

    config_overrides, sweep_overrides = split_overrides(list(overrides))
    cfg = load_config(config_path, config_overrides)  # errors name the config file or the flag
    space_data = load_yaml(space_path)
    settings = sweep_settings((space_data.get("sweep") or {}) if isinstance(space_data, dict) else {},
                              cfg.sweep, sweep_overrides)
    try:
        base = apply_overrides(load_yaml(config_path) if config_path is not None else {}, settings.trial)
        cfg = resolve_config(base, config_overrides)
    except ConfigError as err:
        raise ConfigError(f"sweep.trial: {err}") from None
    return load_space(space_path, cfg.to_dict(), sweep_overrides), cfg
