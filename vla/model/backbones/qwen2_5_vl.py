"""Qwen2.5-VL: Qwen2-VL's layout with a windowed-attention ViT (full attention at ``fullatt_block_indexes``)."""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration

from vla.model.backbones.qwen2vl import Qwen2VLBackbone


class Qwen2_5_VLBackbone(Qwen2VLBackbone):
    """Patches, the 2x2 merger, 3-D rotary positions and the Qwen2 LM are Qwen2-VL's; the tower
    attends within windows of ``window_size`` px and restores the patch order itself."""

    family = "qwen2_5_vl"
    hf_model_class = Qwen2_5_VLForConditionalGeneration
