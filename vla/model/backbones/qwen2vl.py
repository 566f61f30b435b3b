"""Qwen2-VL: a ViT on flattened patches with a 2x2 patch merger + Qwen2 LM with 3-D rotary positions."""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2VLForConditionalGeneration

from vla.model.backbones.base import CLIP_MEAN, CLIP_STD, Backbone


class Qwen2VLBackbone(Backbone):
    family = "qwen2vl"
    hf_model_class = Qwen2VLForConditionalGeneration
    default_image_mean = CLIP_MEAN
    default_image_std = CLIP_STD

    def __init__(self, vlm: Qwen2VLForConditionalGeneration, image_mean, image_std):
        super().__init__(vlm, image_mean, image_std)
        self.model = vlm.model  # vision tower with merger, LM body; the LM output head is left behind

    @classmethod
    def tower_image_size(cls, hf_config) -> int | None:
        return None  # any multiple of patch_size * spatial_merge_size

    @classmethod
    def size_multiple(cls, hf_config) -> int:
        vision = hf_config.vision_config
        return vision.patch_size * vision.spatial_merge_size

    def vision_tokens(self, image_size: int) -> int:
        return (image_size // self.size_multiple(self.hf_config)) ** 2  # after the 2x2 patch merger

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.embed_tokens(input_ids)

    def _patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` -> flattened patches in the order Qwen2VLImageProcessor emits them."""
        vision = self.hf_config.vision_config
        p, m, tp = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        n, c, h, w = pixel_values.shape
        x = pixel_values.unsqueeze(1).expand(n, tp, c, h, w)  # a still image repeated over time
        x = x.reshape(n, tp, c, h // (p * m), m, p, w // (p * m), m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return x.reshape(n * (h // p) * (w // p), c * tp * p * p)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        n, _, h, w = pixel_values.shape
        patch = self.hf_config.vision_config.patch_size
        grid = torch.tensor([[1, h // patch, w // patch]], device=pixel_values.device).repeat(n, 1)
        tokens = self.model.visual(self._patchify(pixel_values), grid_thw=grid).pooler_output
        return tokens.reshape(n, -1, tokens.shape[-1])

    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        position_ids = self._positions(image_index)
        out = self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def _positions(self, image_index: torch.Tensor) -> torch.Tensor:
        """3-D rotary positions ``[3, N, S]``, as Qwen2-VL's processor lays them out.

        Text tokens take a running index; an image's tokens take (t, row, column) offsets
        from where it starts, and the index then moves on by the grid's side. Every frame
        has the same layout (text, its square images back to back, text), so one row serves all.
        """
        row = image_index[0]
        merge = self.hf_config.vision_config.spatial_merge_size
        side = round(int((row == 1).sum()) ** 0.5)  # merged grid of one square image
        grid = torch.tensor([1, side * merge, side * merge])
        is_image = (row > 0).nonzero().flatten()
        first, end = int(is_image[0]), int(is_image[-1]) + 1
        device = image_index.device
        pieces = [torch.arange(first, device=device).expand(3, -1)]
        position = first
        for _ in range(int(row.max())):
            pieces.append(self.model.get_vision_position_ids(position, grid, 1, merge, device=device))
            position += side
        pieces.append(torch.arange(row.numel() - end, device=device).expand(3, -1) + position)
        positions = torch.cat(pieces, dim=1)
        return positions.unsqueeze(1).expand(3, image_index.shape[0], -1)

    def decoder_blocks(self) -> list[nn.Module]:
        return list(self.model.language_model.layers)

    def vision_blocks(self) -> list[nn.Module]:
        return list(self.model.visual.blocks)

    def module_groups(self) -> dict[str, list[nn.Module]]:
        return {
            "vision": [self.model.visual],
            "text_embedding": [self.model.language_model.embed_tokens],
            "language_model": [self.model.language_model],
        }
