"""The layout PaliGemma and LLaVA share: ``model.vision_tower`` -> ``model.multi_modal_projector`` -> ``model.language_model``."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from vla.model.backbones.base import LLAMA_TP_PLAN, Backbone


class ProjectorVLMBackbone(Backbone):
    """A vision tower whose tokens a projector maps into the LM; subclasses say how images are encoded."""

    def __init__(self, vlm: PreTrainedModel, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        self.model = vlm.model  # vision tower, projector, LM body; the LM output head is left behind

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.embed_tokens(input_ids)

    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        # The model builds the causal mask and the positions itself.
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.model.language_model.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.vision_tower.encoder.layers)

    def tensor_parallel_plan(self) -> dict[str, str]:
        return LLAMA_TP_PLAN  # Gemma, Llama and Qwen2 blocks name their projections alike

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "vision": [self.model.vision_tower, self.model.multi_modal_projector],
            "text_embedding": [self.model.language_model.embed_tokens],
            "language_model": [self.model.language_model],
        }
