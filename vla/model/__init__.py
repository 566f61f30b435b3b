"""The VLA policy model: a Hugging Face VLM backbone, an [LRN] action token and a policy head.

Names are imported on first use, so ``vla.model.config`` (read by every config loader)
stays free of the torch/transformers import cost.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKBONES": "vla.model.backbones",
    "Backbone": "vla.model.backbones",
    "ModelConfig": "vla.model.config",
    "load_export": "vla.model.export",
    "save_export": "vla.model.export",
    "ActionOutput": "vla.model.heads",
    "ActionStepper": "vla.model.stepper",
    "build_tokenizer": "vla.model.tokenizer",
    "count_parameters": "vla.model.trainable",
    "VLAModel": "vla.model.vla_model",
    "build_model": "vla.model.vla_model",
    "build_sharded_model": "vla.model.loading",
    "pretrained_loader": "vla.model.loading",
    "run_image_size": "vla.model.backbones",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
