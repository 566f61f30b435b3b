"""The small interface every VLM family is adapted to."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from vla.typed_config import ConfigError

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


class SpecialIds(NamedTuple):
    """The token ids the sequence assembly embeds around the instruction."""

    bos: int
    eos: int
    pad: int


class Backbone(nn.Module, ABC):
    """A VLM reduced to what the policy needs: text embeddings, image tokens, the LM body.

    A subclass keeps only the submodules of the Hugging Face model it uses (never the LM
    output head) and says which of them the freeze options act on.
    """

    family: ClassVar[str]
    hf_model_class: ClassVar[type[PreTrainedModel]]
    # The LM's ``model_type`` when the Hugging Face class serves several families (PaliGemma 1 and 2).
    text_model_type: ClassVar[str | None] = None
    default_image_mean: ClassVar[tuple[float, float, float]] = HALF
    default_image_std: ClassVar[tuple[float, float, float]] = HALF
    # Where this adapter's submodules sit in the Hugging Face model: adapter prefix -> HF prefix.
    hf_prefixes: ClassVar[dict[str, str]] = {"model.": "model."}

    def __init__(self, vlm: PreTrainedModel, image_mean: tuple[float, ...], image_std: tuple[float, ...]):
        super().__init__()
        self.hf_config: PretrainedConfig = vlm.config
        self.text_config: PretrainedConfig = vlm.config.get_text_config()
        self.hidden_size: int = self.text_config.hidden_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.special_ids = SpecialIds(0, 0, 0)  # set by ``from_vlm``

    @classmethod
    def from_vlm(
        cls, vlm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pretrained_dir: str | None = None
    ) -> "Backbone":
        """Wrap ``vlm``; image statistics from ``pretrained_dir``'s preprocessor config when present."""
        mean, std = cls.default_image_mean, cls.default_image_std
        if pretrained_dir is not None:
            processor = Path(pretrained_dir) / "preprocessor_config.json"
            if processor.is_file():
                stats = json.loads(processor.read_text())
                mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
        backbone = cls(vlm, mean, std)
        backbone.special_ids = resolve_special_ids(cls.family, vlm.config, tokenizer, pretrained_dir)
        return backbone

    # Sizes
    @classmethod
    def tower_image_size(cls, hf_config: PretrainedConfig) -> int | None:
        """The tower's fixed input size; None when it takes any size (then ``model.image_size``)."""
        return hf_config.vision_config.image_size

    @classmethod
    def size_multiple(cls, hf_config: PretrainedConfig) -> int:
        """What an any-size tower's input side must be a multiple of."""
        return 1

    def vision_tokens(self, image_size: int) -> int:
        """LM tokens ``encode_images`` gives per image of ``image_size`` px, read off the config
        (no weights needed: also on a model whose parameters are still on the meta device)."""
        return (image_size // self.hf_config.vision_config.patch_size) ** 2

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


def _as_id(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve_special_ids(
    family: str, hf_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, folder: str | None
) -> SpecialIds:
    """BOS, EOS and padding ids: the text config's, else the top level's, else the tokenizer's.

    Composite configs keep them in different places (Kosmos-2 and Qwen2-VL in the text config,
    LLaVA-1.5 nowhere but its tokenizer's pad); a config object may lack the attribute
    altogether, so every read has a default. Raises ``ConfigError`` naming family and folder.
    """
    sources = (hf_config.get_text_config(), hf_config)
    ids = {}
    for name in SpecialIds._fields:
        candidates = [getattr(config, f"{name}_token_id", None) for config in sources]
        candidates.append(getattr(tokenizer, f"{name}_token_id", None))
        found = next((i for i in map(_as_id, candidates) if i is not None), None)
        if found is None:
            where = folder or "the tiny config"
            raise ConfigError(
                f"model.pretrained_path: {family} backbone in {where}: no {name.upper()} token id in the "
                f"text config, the config's top level or the tokenizer"
            )
        ids[name] = found
    return SpecialIds(**ids)
