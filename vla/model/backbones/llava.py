"""LLaVA: a CLIP or SigLIP tower + MLP projector + a Llama-style LM."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from vla.model.backbones.base import CLIP_MEAN, CLIP_STD, HALF
from vla.model.backbones.projector_vlm import ProjectorVLMBackbone


class LlavaBackbone(ProjectorVLMBackbone):
    family = "llava"
    hf_model_class = LlavaForConditionalGeneration
    default_image_mean = CLIP_MEAN
    default_image_std = CLIP_STD

    @classmethod
    def from_vlm(
        cls, vlm: LlavaForConditionalGeneration, tokenizer, pretrained_dir: str | None = None
    ) -> "LlavaBackbone":
        backbone = super().from_vlm(vlm, tokenizer, pretrained_dir)
        if pretrained_dir is None and vlm.config.vision_config.model_type.startswith("siglip"):
            backbone.image_mean, backbone.image_std = HALF, HALF
        return backbone

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=self.hf_config.vision_feature_layer,
            vision_feature_select_strategy=self.hf_config.vision_feature_select_strategy,
        ).pooler_output
        return torch.stack(list(features))  # one entry per image

    def vision_tokens(self, image_size: int) -> int:
        patches = super().vision_tokens(image_size)
        has_class_token = self.hf_config.vision_config.model_type.startswith("clip")
        keeps_it = self.hf_config.vision_feature_select_strategy == "full"
        return patches + int(has_class_token and keeps_it)

    def unused_modules(self) -> list[nn.Module]:
        """Tower parts past the feature layer LLaVA reads (e.g. the last block for layer -2), pooling heads."""
        tower = self.model.vision_tower
        layers = self.hf_config.vision_feature_layer
        deepest = max(layers) if isinstance(layers, list) else layers
        num_blocks = len(tower.encoder.layers)
        used_blocks = deepest % (num_blocks + 1)  # hidden_states[i] is the output of block i - 1
        unused = list(tower.encoder.layers)[used_blocks:]
        unused += [m for m in (getattr(tower, "post_layernorm", None), getattr(tower, "head", None)) if m is not None]
        return unused
