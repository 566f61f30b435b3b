"""VLM backbones: one adapter per family, a registry, how one is created and the size it runs at."""

from __future__ import annotations

import copy
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase
from transformers.modeling_utils import local_torch_dtype

from vla.model.backbones.base import GROUPS, Backbone, SpecialIds
from vla.model.backbones.kosmos2 import Kosmos2Backbone
from vla.model.backbones.llava import LlavaBackbone
from vla.model.backbones.paligemma import PaliGemmaBackbone
from vla.model.backbones.paligemma2 import PaliGemma2Backbone
from vla.model.backbones.qwen2_5_vl import Qwen2_5_VLBackbone
from vla.model.backbones.qwen2vl import Qwen2VLBackbone
from vla.model.backbones.smolvlm2 import SmolVLM2Backbone
from vla.model.backbones.tiny import TINY_CONFIGS, TinySpec
from vla.model.config import ModelConfig
from vla.model.meta import parameters_on_meta
from vla.typed_config import ConfigError

log = logging.getLogger("vla.model")

BACKBONES: dict[str, type[Backbone]] = {
    cls.family: cls
    for cls in (
        PaliGemmaBackbone, Kosmos2Backbone, LlavaBackbone, Qwen2VLBackbone, Qwen2_5_VLBackbone, SmolVLM2Backbone,
        PaliGemma2Backbone,
    )
}
# The text config field holding the LM's depth (Kosmos-2 names it ``layers``).
_DEPTH_FIELDS = ("num_hidden_layers", "layers")


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


def pretrained_hf_config(cfg: ModelConfig) -> PretrainedConfig:
    """The Hugging Face config of ``cfg.pretrained_path`` (its config.json only: no weights are read)."""
    folder = Path(cfg.pretrained_path).expanduser()
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(f"model.pretrained_path: {folder} has no config.json (a Hugging Face model folder)")
    config_class = BACKBONES[cfg.backbone].hf_model_class.config_class
    model_type = json.loads(file.read_text()).get("model_type")
    if model_type != config_class.model_type:
        raise ConfigError(f"model.backbone: {cfg.backbone} expects a {config_class.model_type!r} checkpoint, "
                          f"but {file} holds model_type {model_type!r}")
    config = config_class.from_pretrained(str(folder), local_files_only=True)
    expected_text = BACKBONES[cfg.backbone].text_model_type
    text_type = config.get_text_config().model_type
    if expected_text is not None and text_type != expected_text:
        other = next((name for name, c in BACKBONES.items() if c.text_model_type == text_type), None)
        hint = f" (model.backbone={other})" if other else ""
        raise ConfigError(f"model.backbone: {cfg.backbone} expects a {expected_text!r} LM, but {file} holds "
                          f"a {text_type!r} one{hint}")
    return config


def lm_depth(hf_config: PretrainedConfig) -> int:
    """The number of decoder blocks the LM of ``hf_config`` has."""
    text = hf_config.get_text_config()
    return next(getattr(text, field) for field in _DEPTH_FIELDS if hasattr(text, field))


def keep_lm_layers(hf_config: PretrainedConfig, layers: int | None, where: str) -> PretrainedConfig:
    """A copy of ``hf_config`` whose LM has only its first ``layers`` decoder blocks (``model.lm_layers``;
    None: all of them), so that the cut blocks are never built, allocated or read.

    Per-layer lists (``layer_types``: Gemma-2's sliding/full alternation) are cut alike.
    Raises ``ConfigError`` naming ``where`` when the LM has fewer blocks.
    """
    depth = lm_depth(hf_config)
    if layers is None or layers == depth:
        return hf_config
    if layers > depth:
        raise ConfigError(f"model.lm_layers: {layers} exceeds the {depth} decoder blocks of the LM in {where}")
    config = copy.deepcopy(hf_config)
    text = config.get_text_config()
    field = next(field for field in _DEPTH_FIELDS if hasattr(text, field))
    setattr(text, field, layers)
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = text.layer_types[:layers]
    return config


def image_size_for(cfg: ModelConfig, hf_config: PretrainedConfig) -> int:
    """The side (px) the model runs at: a fixed-size tower's own, else ``cfg.image_size``.

    A pretrained tower's fixed size overrides ``model.image_size`` (logged when they differ);
    for an any-size tower (Qwen2-VL) ``model.image_size`` must be a multiple of its patch grid.
    """
    cls = BACKBONES[cfg.backbone]
    tower = cls.tower_image_size(hf_config)
    if tower is None:
        multiple = cls.size_multiple(hf_config)
        if cfg.image_size % multiple:
            raise ConfigError(f"model.image_size: {cfg.backbone} needs a multiple of {multiple}, got {cfg.image_size}")
        return cfg.image_size
    if tower != cfg.image_size and cfg.pretrained_path is not None:
        log.warning("model.image_size=%d is overridden: the %s tower in %s takes %d px, so frames are resized to %d",
                    cfg.image_size, cfg.backbone, cfg.pretrained_path, tower, tower)
    return tower


def run_image_size(cfg: ModelConfig) -> int:
    """The side (px) the data pipeline and the policy resize frames to, read from the config only."""
    if cfg.pretrained_path is None:
        return cfg.image_size  # tiny configs are built at this size
    return image_size_for(cfg, pretrained_hf_config(cfg))


def build_backbone(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    hf_config: PretrainedConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    on_meta: bool = False,
) -> Backbone:
    """A backbone from ``cfg.pretrained_path``'s weights (in ``dtype``), or random weights of ``hf_config``
    (the pretrained folder's config when None), or a tiny config.

    ``on_meta`` leaves every Hugging Face parameter on the meta device (no memory, no init), to be
    filled later (``vla.model.loading``); buffers are real.
    """
    cls = BACKBONES[cfg.backbone]
    where = cfg.pretrained_path or "the tiny config"
    if hf_config is None and cfg.pretrained_path is not None:
        hf_config = keep_lm_layers(pretrained_hf_config(cfg), cfg.lm_layers, where)
        if not on_meta:
            # Built from the cut config: the checkpoint's later blocks are unexpected keys, never read.
            vlm = cls.hf_model_class.from_pretrained(
                str(Path(cfg.pretrained_path).expanduser()), config=hf_config, local_files_only=True, dtype=dtype
            )
            return cls.from_vlm(vlm, tokenizer, cfg.pretrained_path)
    config = keep_lm_layers(hf_config if hf_config is not None else tiny_config(cfg, tokenizer), cfg.lm_layers, where)
    # Built as from_pretrained builds it: parameters in ``dtype``, buffers as the model defines them.
    with local_torch_dtype(dtype, cls.hf_model_class.__name__), parameters_on_meta() if on_meta else nullcontext():
        vlm = cls.hf_model_class(config)
    return cls.from_vlm(vlm, tokenizer, cfg.pretrained_path)


__all__ = [
    "BACKBONES", "GROUPS", "Backbone", "SpecialIds", "build_backbone", "image_size_for", "keep_lm_layers", "lm_depth",
    "pretrained_hf_config", "run_image_size", "tiny_config",
]
