"""VLM backbones: one adapter per family, a registry, and how one is created."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from vla.model.backbones.base import GROUPS, Backbone
from vla.model.backbones.kosmos2 import Kosmos2Backbone
from vla.model.backbones.llava import LlavaBackbone
from vla.model.backbones.paligemma import PaliGemmaBackbone
from vla.model.backbones.qwen2vl import Qwen2VLBackbone
from vla.model.backbones.tiny import TINY_CONFIGS, TinySpec
from vla.model.config import ModelConfig

BACKBONES: dict[str, type[Backbone]] = {
    cls.family: cls for cls in (PaliGemmaBackbone, Kosmos2Backbone, LlavaBackbone, Qwen2VLBackbone)
}


def tiny_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The tiny Hugging Face config of ``cfg.backbone``, sized by ``cfg`` and matched to ``tokenizer``."""
    spec = TinySpec(
        hidden=cfg.tiny_hidden_size,
        layers=cfg.tiny_num_layers,
        image_size=cfg.image_size,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        vision_tower=cfg.tiny_vision_tower,
    )
    return TINY_CONFIGS[cfg.backbone](spec)


def build_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig | None = None
) -> Backbone:
    """A backbone from ``hf_config`` (random weights, to be loaded), ``cfg.pretrained_path``, or tiny."""
    cls = BACKBONES[cfg.backbone]
    if hf_config is not None:
        return cls.from_vlm(cls.hf_model_class(hf_config))
    if cfg.pretrained_path is not None:
        vlm = cls.hf_model_class.from_pretrained(cfg.pretrained_path, local_files_only=True, dtype=torch.float32)
        return cls.from_vlm(vlm, cfg.pretrained_path)
    return cls.from_vlm(cls.hf_model_class(tiny_config(cfg, tokenizer)))


__all__ = ["BACKBONES", "GROUPS", "Backbone", "build_backbone", "tiny_config"]
