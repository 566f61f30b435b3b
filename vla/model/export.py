"""The policy export: one folder, written and read back only here; loadable with no network, Ray or FSDP.

    directory/
        model.safetensors       full state dict of the VLAModel
        model_config.json       the ModelConfig
        backbone_config.json    the Hugging Face config of the backbone
        tokenizer files         (AutoTokenizer.from_pretrained(directory) loads them; right padding)
        normalization.json      the training action statistics (``Normalization.to_dict()``)
        config.yaml             the full resolved run config (cameras, instruction length)

Training writes the last two beside every run as well (``run_files``), in the same format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoTokenizer

from vla.model.backbones import BACKBONES
from vla.model.config import ModelConfig
from vla.model.loading import load_state
from vla.model.tokenizer import build_tokenizer
from vla.model.vla_model import VLAModel, build_model
from vla.typed_config import from_dict, to_dict

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
BACKBONE_CONFIG = "backbone_config.json"
NORMALIZATION_FILE = "normalization.json"
RUN_CONFIG_FILE = "config.yaml"


def run_files(run_config: dict, normalization: dict) -> dict[str, str]:
    """The run's resolved config and action statistics as files (name -> text)."""
    return {
        RUN_CONFIG_FILE: yaml.safe_dump(run_config, sort_keys=False),
        NORMALIZATION_FILE: json.dumps(normalization, indent=1),
    }


def save_export(
    directory: str | Path,
    model: VLAModel,
    *,
    run_config: dict,
    normalization: dict,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the whole export of ``model`` (or of ``state_dict``, e.g. gathered from FSDP) to ``directory``.

    ``run_config`` is the resolved run config (``Config.to_dict()``), ``normalization`` the
    action statistics (``Normalization.to_dict()``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / WEIGHTS))
    (directory / MODEL_CONFIG).write_text(json.dumps(to_dict(model.config), indent=2))
    model.backbone.hf_config.to_json_file(str(directory / BACKBONE_CONFIG))
    build_tokenizer(model.config).save_pretrained(str(directory))
    for name, text in run_files(run_config, normalization).items():
        (directory / name).write_text(text)
    return directory


def load_export(directory: str | Path, dtype: torch.dtype = torch.float32) -> tuple[VLAModel, ModelConfig]:
    """Rebuild the model saved by ``save_export`` in eval mode, held in ``dtype`` (the head in fp32).

    The weights are read tensor by tensor into a model built without them: at most one copy,
    in ``dtype``.
    """
    directory = Path(directory)
    cfg = from_dict(ModelConfig, json.loads((directory / MODEL_CONFIG).read_text()))
    config_class = BACKBONES[cfg.backbone].hf_model_class.config_class
    hf_config = config_class.from_json_file(str(directory / BACKBONE_CONFIG))
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = build_model(cfg, tokenizer=tokenizer, hf_config=hf_config, dtype=dtype, backbone_on_meta=True)
    load_state(model, directory / WEIGHTS)
    return model.eval(), cfg


def read_run_config(directory: str | Path) -> dict:
    """The resolved run config saved with an export (a dict for ``vla.config.resolve_config``)."""
    return yaml.safe_load((Path(directory) / RUN_CONFIG_FILE).read_text())


def read_normalization(directory: str | Path) -> dict:
    """The action statistics saved with an export (a dict for ``Normalization.from_dict``)."""
    return json.loads((Path(directory) / NORMALIZATION_FILE).read_text())
