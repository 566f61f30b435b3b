"""The full configuration of a run, resolved from a YAML file and ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-4", "model.head=mlp"])

The resolved config is saved with every run (``config.yaml`` in the run folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla.configuration import ConfigError, check, from_dict, load_yaml, parse_override, set_dotted, to_dict
from vla.data.config import DataConfig
from vla.model.config import ModelConfig
from vla.train.config import RunConfig, TrainConfig


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # How pipelines/tune.py sweeps this config: vla.tune.space.SweepSettings keys, over the
    # space file's sweep section (checked there); training ignores it
    sweep: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check(
            len(self.data.cameras) == self.model.num_views,
            "data.cameras",
            f"names {len(self.data.cameras)} cameras but model.num_views is {self.model.num_views}",
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_config(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    """Apply dotted ``key=value`` overrides to ``data`` and build a validated ``Config``."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return from_dict(Config, data)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config of ``path`` (defaults when None) with ``overrides`` applied, validated."""
    data = load_yaml(path) if path is not None else {}
    try:
        return resolve_config(data, overrides)
    except ConfigError as err:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{err}{where}") from None
