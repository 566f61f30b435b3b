"""PaliGemma: SigLIP tower + linear projector + Gemma LM."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PaliGemmaForConditionalGeneration

from vla.model.backbones.base import HALF, Backbone


class PaliGemmaBackbone(Backbone):
    family = "paligemma"
    hf_model_class = PaliGemmaForConditionalGeneration
    default_image_mean = HALF
    default_image_std = HALF

    def __init__(self, vlm: PaliGemmaForConditionalGeneration, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        self.model = vlm.model  # vision tower, projector, LM body; the LM output head is left behind
        # PaliGemma's Gemma attends bidirectionally by default (and then over padding too).
        # Run it causally like every other family: the action token reads all before it.
        self.text_config.use_bidirectional_attention = False
        for module in self.model.language_model.modules():
            if hasattr(module, "is_causal"):  # attention layers read the flag once, when built
                module.is_causal = True

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.embed_tokens(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values).pooler_output

    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        # PaliGemmaModel builds the causal mask and its 1-based positions itself.
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.model.language_model.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.vision_tower.encoder.layers)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "vision": [self.model.vision_tower, self.model.multi_modal_projector],
            "text_embedding": [self.model.language_model.embed_tokens],
            "language_model": [self.model.language_model],
        }

    def unused_modules(self) -> list[nn.Module]:
        # SigLIP's attention-pooling head (present when ``vision_use_head``) feeds nothing here.
        head = getattr(self.model.vision_tower, "head", None)
        return [head] if head is not None else []
