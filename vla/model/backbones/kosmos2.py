"""Kosmos-2: CLIP tower + latent-query resampler + Magneto-style LM (RoboVLMs' best CALVIN backbone)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Kosmos2ForConditionalGeneration

from vla.model.backbones.base import CLIP_MEAN, CLIP_STD, Backbone


class Kosmos2Backbone(Backbone):
    family = "kosmos2"
    hf_model_class = Kosmos2ForConditionalGeneration
    default_image_mean = CLIP_MEAN
    default_image_std = CLIP_STD
    hf_prefixes = {
        "vision_model.": "vision_model.",
        "image_to_text_projection.": "image_to_text_projection.",
        "text_model.": "text_model.model.",
    }

    def __init__(self, vlm: Kosmos2ForConditionalGeneration, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        self.vision_model = vlm.vision_model
        self.image_to_text_projection = vlm.image_to_text_projection
        self.text_model = vlm.text_model.model  # the LM body; its output head is left behind

    def vision_tokens(self, image_size: int) -> int:
        return self.hf_config.latent_query_num  # the resampler's queries

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The LM multiplies every input embedding by ``embed_scale`` itself.
        return self.text_model.embed_tokens(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # As Kosmos2ForConditionalGeneration.get_image_features: all patches, normalized, resampled.
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state
        hidden = nn.functional.normalize(self.vision_model.model.post_layernorm(hidden), dim=-1)
        tokens, _ = self.image_to_text_projection(hidden)
        return tokens

    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        out = self.text_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.text_model.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.vision_model.model.encoder.layers)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "vision": [self.vision_model, self.image_to_text_projection],
            "text_embedding": [self.text_model.embed_tokens],
            "language_model": [self.text_model],
        }
