"""What trains: the freeze options, LoRA adapters on the LM, and parameter counts."""

from __future__ import annotations

from torch import nn

from vla.model.backbones import Backbone
from vla.model.config import ModelConfig


def add_lora(backbone: Backbone, cfg: ModelConfig) -> None:
    """Inject LoRA adapters (rank ``cfg.lora_rank``) into every linear layer of the LM's decoder blocks."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("lora_rank > 0 needs peft: pip install 'vla[lora]'") from err
    targets = sorted(
        {
            name.rsplit(".", 1)[-1]
            for block in backbone.decoder_blocks()
            for name, module in block.named_modules()
            if isinstance(module, nn.Linear)
        }
    )
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    inject_adapter_in_model(lora, backbone.language_model())


def is_lora_parameter(name: str) -> bool:
    return "lora_" in name


def apply_trainable(model: nn.Module, cfg: ModelConfig) -> None:
    """Set ``requires_grad`` on every parameter of ``model`` (a ``VLAModel``) from the options.

    The LM trains unless ``freeze_backbone`` or LoRA (then only its adapters do); the vision
    tower + projector follow ``train_vision``; the text embeddings ``train_text_embedding``.
    Modules whose output never reaches the action token stay frozen. The action token and
    the head always train.
    """
    backbone: Backbone = model.backbone
    groups = backbone.module_groups()
    backbone.requires_grad_(not cfg.freeze_backbone and cfg.lora_rank == 0)
    for module in groups["vision"]:
        module.requires_grad_(cfg.train_vision)
    for module in groups["text_embedding"]:
        module.requires_grad_(cfg.train_text_embedding)
    for name, param in backbone.named_parameters():
        if is_lora_parameter(name):
            param.requires_grad_(True)
    for module in backbone.unused_modules():
        module.requires_grad_(False)
    model.action_token.requires_grad_(True)
    model.head.requires_grad_(True)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
