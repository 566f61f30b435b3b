"""The full configuration of a run, resolved from a YAML file and ``key=value`` overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=1e-4", "model.head=mlp"])

The resolved config is saved with every run (``config.yaml`` in the run folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla.data.config import DataConfig
from vla.model.config import ModelConfig
from vla.train.config import RunConfig, TrainConfig
from vla.typed_config import ConfigError, check, from_dict, load_yaml, parse_override, set_dotted, to_dict


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


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config written before action spaces (every run and export saved then holds one) in
    today's keys: ``data.lerobot_gripper: C`` (the convention of dimension 6 of a 7-value action)
    becomes ``data.lerobot_grippers: ["6:C"]``."""
    data_section = data.get("data")
    if isinstance(data_section, dict) and "lerobot_gripper" in data_section:
        section = dict(data_section)
        section.setdefault("lerobot_grippers", [f"6:{section.pop('lerobot_gripper')}"])
        section.pop("lerobot_gripper", None)
        data = {**data, "data": section}
    return data


def resolve_config(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    """Apply dotted ``key=value`` overrides to ``data`` and build a validated ``Config``."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in upgrade_config(data).items()}
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return from_dict(Config, data)


ERROR_KEY = re.compile(r"^(?:unknown config key )?([\w.\[\]]+)[: ]")


def error_source(message: str, path: str | Path | None, overrides: list[str]) -> str:
    """Where the value a ``ConfigError`` names came from: the command-line override setting its
    key (the last one wins), else the file, else the defaults."""
    match = ERROR_KEY.match(message)
    key = match.group(1) if match else ""
    for text in reversed(overrides):
        name = text.split("=", 1)[0].strip()
        if key == name or key.startswith((f"{name}.", f"{name}[")) or name.startswith(f"{key}."):
            return f"from the command line: {text}"
    return f"in {path}" if path is not None else "in the defaults"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config of ``path`` (defaults when None) with ``overrides`` applied, validated.

    Every ``ConfigError`` says where the bad value came from: the file or the command line.
    """
    data = load_yaml(path) if path is not None else {}
    try:
        return resolve_config(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{err} ({error_source(str(err), path, list(overrides))})") from None
