"""SmolVLM2 (Idefics3 class): a SigLIP tower on 512 px tiles, a pixel-shuffle connector, a Llama LM (SmolVLA's backbone)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import SmolVLMForConditionalGeneration

from vla.model.backbones.base import LLAMA_TP_PLAN, Backbone


class SmolVLM2Backbone(Backbone):
    family = "smolvlm2"
    hf_model_class = SmolVLMForConditionalGeneration

    def __init__(self, vlm: SmolVLMForConditionalGeneration, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        self.model = vlm.model  # vision tower, connector, LM body; the LM output head is left behind

    def vision_tokens(self, image_size: int) -> int:
        patches = (image_size // self.hf_config.vision_config.patch_size) ** 2
        return patches // self.hf_config.scale_factor**2  # the pixel shuffle folds scale x scale patches into one

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embed_tokens(input_ids)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # The tower and connector directly: SmolVLMModel.get_image_features drops all-zero images
        # (its padding convention), which would silently shift every later frame's tokens.
        tower = self.model.vision_model
        dtype = tower.embeddings.patch_embedding.weight.dtype  # as get_image_features casts
        hidden = tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        return self.model.connector(hidden)

    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        out = self.model.text_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.model.text_model.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.vision_model.encoder.layers)

    def tensor_parallel_plan(self) -> dict[str, str]:
        return LLAMA_TP_PLAN

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "vision": [self.model.vision_model, self.model.connector],
            "text_embedding": [self.model.text_model.embed_tokens],
            "language_model": [self.model.text_model],
        }
