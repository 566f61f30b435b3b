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

Everything is checked against the real config before a trial starts: an unknown key, a
bad range or an unknown preset is a ``ConfigError`` that names it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vla.configuration import ConfigError, check, from_dict, load_yaml, set_dotted

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")
PRESET_KEY = "preset"


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


def parse_space(data: dict[str, Any], base: dict[str, Any], where: str = "") -> SearchSpace:
    """Build and check a ``SearchSpace`` from the mapping of a space file."""
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
    sweep = from_dict(SweepSettings, data.get("sweep") or {}, prefix="sweep.")
    space = SearchSpace(
        params=[_parse_param(key, spec, where) for key, spec in params_data.items()], presets=presets, sweep=sweep
    )
    _check_against_config(space, base, where)
    return space


def load_space(path: str | Path, base: dict[str, Any]) -> SearchSpace:
    """Read and check the space file ``path`` against the base config dictionary ``base``."""
    try:
        return parse_space(load_yaml(path), base, where=f" (in {path})")
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if str(path) in message else f"{message} (in {path})") from None
