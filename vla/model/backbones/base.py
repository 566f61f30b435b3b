"""The small interface every VLM family is adapted to."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# The groups the freeze options act on; every backbone parameter belongs to exactly one
# of them or to ``unused_modules()`` (always frozen: no gradient ever reaches it).
GROUPS = ("vision", "text_embedding", "language_model")

# Tensor parallelism of a Llama-style decoder block (Llama, Gemma, Qwen2): the projections into
# heads and MLP channels split by output ("colwise"), the projections back split by input.
LLAMA_TP_PLAN = {
    "self_attn.q_proj": "colwise",
    "self_attn.k_proj": "colwise",
    "self_attn.v_proj": "colwise",
    "self_attn.o_proj": "rowwise",
    "mlp.gate_proj": "colwise",
    "mlp.up_proj": "colwise",
    "mlp.down_proj": "rowwise",
}


class Backbone(nn.Module, ABC):
    """A VLM reduced to what the policy needs: text embeddings, image tokens, the LM body.

    A subclass keeps only the submodules of the Hugging Face model it uses (never the LM
    output head) and says which of them the freeze options act on.
    """

    family: ClassVar[str]
    hf_model_class: ClassVar[type[PreTrainedModel]]
    default_image_mean: ClassVar[tuple[float, float, float]] = HALF
    default_image_std: ClassVar[tuple[float, float, float]] = HALF

    def __init__(self, vlm: PreTrainedModel, image_mean: tuple[float, ...], image_std: tuple[float, ...]):
        super().__init__()
        self.hf_config: PretrainedConfig = vlm.config
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    @classmethod
    def from_vlm(cls, vlm: PreTrainedModel, pretrained_dir: str | None = None) -> "Backbone":
        """Wrap ``vlm``; image statistics from ``pretrained_dir``'s preprocessor config when present."""
        mean, std = cls.default_image_mean, cls.default_image_std
        if pretrained_dir is not None:
            processor = Path(pretrained_dir) / "preprocessor_config.json"
            if processor.is_file():
                stats = json.loads(processor.read_text())
                mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        return cls(vlm, mean, std)

    # Sizes and special tokens
    @property
    def text_config(self) -> PretrainedConfig:
        return self.hf_config.get_text_config()

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def image_size(self) -> int | None:
        """The tower's fixed input size; None when it takes any size (the model config's then)."""
        return self.hf_config.vision_config.image_size

    @property
    def bos_token_id(self) -> int:
        return _first_id(self.text_config.bos_token_id, self.hf_config.bos_token_id)

    @property
    def eos_token_id(self) -> int:
        return _first_id(self.text_config.eos_token_id, self.hf_config.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        return _first_id(self.text_config.pad_token_id, self.hf_config.pad_token_id, 0)

    # What the policy calls
    @abstractmethod
    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, L]`` -> embeddings ``[N, L, hidden]`` as the LM expects them in ``inputs_embeds``."""

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalized images ``[N, 3, H, W]`` -> LM-space tokens ``[N, K, hidden]`` (tower + projector)."""

    @abstractmethod
    def run_language_model(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, image_index: torch.Tensor
    ) -> torch.Tensor:
        """The LM on ``inputs_embeds [N, S, hidden]`` with a 0/1 mask ``[N, S]`` -> last hidden states.

        ``image_index [N, S]`` is 0 on text tokens and ``i + 1`` on the tokens of the i-th
        image, for LMs that position vision tokens differently from text (Qwen2-VL's 3-D
        rotary positions); the others ignore it.
        """

    # Structure for FSDP, activation checkpointing and the freeze options
    @abstractmethod
    def decoder_blocks(self) -> list[nn.Module]:
        """The LM's transformer blocks, in order."""

    @abstractmethod
    def vision_blocks(self) -> list[nn.Module]:
        """The vision tower's transformer blocks, in order."""

    @abstractmethod
    def module_groups(self) -> dict[str, list[nn.Module]]:
        """Modules per freeze group (keys ``GROUPS``); text embeddings may sit inside the LM module."""

    def language_model(self) -> nn.Module:
        """The module LoRA adapters are injected into (the LM body)."""
        (module,) = self.module_groups()["language_model"]
        return module

    def unused_modules(self) -> list[nn.Module]:
        """Modules whose output never reaches the action token (kept for checkpoint compatibility)."""
        return []

    def tensor_parallel_plan(self) -> dict[str, str] | None:
        """Decoder-block submodule -> ``"colwise"``/``"rowwise"`` (``vla.train.tensor_parallel``); None: no plan."""
        return None


def _first_id(*candidates: int | list[int] | None) -> int:
    for value in candidates:
        if isinstance(value, list) and value:
            return value[0]
        if isinstance(value, int):
            return value
    raise ValueError("the backbone config names no such special token id")
