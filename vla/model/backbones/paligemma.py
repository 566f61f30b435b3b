"""PaliGemma: SigLIP tower + linear projector + Gemma LM."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PaliGemmaForConditionalGeneration

from vla.model.backbones.base import HALF
from vla.model.backbones.projector_vlm import ProjectorVLMBackbone


class PaliGemmaBackbone(ProjectorVLMBackbone):
    family = "paligemma"
    text_model_type = "gemma"
    hf_model_class = PaliGemmaForConditionalGeneration
    default_image_mean = HALF
    default_image_std = HALF

    def __init__(self, vlm: PaliGemmaForConditionalGeneration, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        # PaliGemma's Gemma attends bidirectionally by default (and then over padding too).
        # Run it causally like every other family: the action token reads all before it.
        self.text_config.use_bidirectional_attention = False
        for module in self.model.language_model.modules():
            if hasattr(module, "is_causal"):  # attention layers read the flag once, when built
                module.is_causal = True

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values).pooler_output

    def unused_modules(self) -> list[nn.Module]:
        # SigLIP's attention-pooling head (present when ``vision_use_head``) feeds nothing here.
        head = getattr(self.model.vision_tower, "head", None)
        return [head] if head is not None else []
