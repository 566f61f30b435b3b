"""A self-contained export: weights, both configs and the tokenizer, loadable with no network, Ray or FSDP.

    directory/
        model.safetensors       full state dict of the VLAModel
        model_config.json       the ModelConfig
        backbone_config.json    the Hugging Face config of the backbone
        tokenizer files         (AutoTokenizer.from_pretrained(directory) loads them)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from vla.configuration import from_dict, to_dict
from vla.model.backbones import BACKBONES
from vla.model.config import ModelConfig
from vla.model.tokenizer import build_tokenizer
from vla.model.vla_model import VLAModel, build_model

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
BACKBONE_CONFIG = "backbone_config.json"
# Written beside the model by training (``extra_files``) and read back by ``vla.policy``:
NORMALIZATION_FILE = "normalization.json"  # the training action statistics
RUN_CONFIG_FILE = "config.yaml"  # the full resolved run config (cameras, instruction length)


def save_export(
    directory: str | Path,
    model: VLAModel,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` (or ``state_dict``, e.g. gathered from FSDP) to ``directory``.

    ``extra_files`` maps file names to text written beside (e.g. ``normalization.json``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(directory / WEIGHTS))
    (directory / MODEL_CONFIG).write_text(json.dumps(to_dict(model.config), indent=2))
    model.backbone.hf_config.to_json_file(str(directory / BACKBONE_CONFIG))
    build_tokenizer(model.config).save_pretrained(str(directory))
    for name, text in (extra_files or {}).items():
        (directory / name).write_text(text)
    return directory


def load_export(directory: str | Path) -> tuple[VLAModel, ModelConfig]:
    """Rebuild the model saved by ``save_export``; returns it in eval mode with its config."""
    directory = Path(directory)
    cfg = from_dict(ModelConfig, json.loads((directory / MODEL_CONFIG).read_text()))
    config_class = BACKBONES[cfg.backbone].hf_model_class.config_class
    hf_config = config_class.from_json_file(str(directory / BACKBONE_CONFIG))
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = build_model(cfg, tokenizer=tokenizer, hf_config=hf_config)
    model.load_state_dict(load_file(str(directory / WEIGHTS)))
    return model.eval(), cfg
