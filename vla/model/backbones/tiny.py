"""Tiny configs of every supported family, built offline for tests and the demo.

Every family's tiny config lives here. All of them share one shape: ``hidden`` wide, ``layers`` deep, 8-pixel patches on
``image_size`` images, and the vocabulary of the tiny tokenizer (so token ids line up).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Kosmos2Config,
    LlavaConfig,
    PaliGemmaConfig,
    PretrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    SmolVLMConfig,
)

PATCH_SIZE = 8


@dataclass(frozen=True)
class TinySpec:
    """What every tiny config needs to know: sizes and the tokenizer's vocabulary and special ids."""

    hidden: int
    layers: int
    image_size: int
    vocab_size: int
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    vision_tower: str = "clip"  # LLaVA only: "clip" or "siglip"

    @property
    def heads(self) -> int:
        return 4 if self.hidden % 4 == 0 else 1

    @property
    def tokens(self) -> dict[str, int]:
        return {"pad_token_id": self.pad_token_id, "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id}


def _clip_like_vision(spec: TinySpec, model_type: str) -> dict:
    return {
        "model_type": model_type,
        "hidden_size": spec.hidden,
        "intermediate_size": 2 * spec.hidden,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "image_size": spec.image_size,
        "patch_size": PATCH_SIZE,
    }


def tiny_paligemma(spec: TinySpec, text_model_type: str = "gemma") -> PretrainedConfig:
    vision = _clip_like_vision(spec, "siglip_vision_model") | {"projection_dim": spec.hidden}
    text = {
        "model_type": text_model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden,
        "intermediate_size": 2 * spec.hidden,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": 1,
        "head_dim": spec.hidden // spec.heads,
        **spec.tokens,
    }
    return PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        projection_dim=spec.hidden,
        image_token_id=spec.vocab_size,
        **spec.tokens,
    )


def tiny_paligemma2(spec: TinySpec) -> PretrainedConfig:
    """PaliGemma with a Gemma-2 LM (soft-capping and alternating sliding-window layers at their defaults)."""
    return tiny_paligemma(spec, text_model_type="gemma2")


def tiny_kosmos2(spec: TinySpec) -> PretrainedConfig:
    vision = _clip_like_vision(spec, "kosmos_2_vision_model")
    del vision["model_type"]
    text = {
        "vocab_size": spec.vocab_size,
        "embed_dim": spec.hidden,
        "ffn_dim": 2 * spec.hidden,
        "layers": spec.layers,
        "attention_heads": spec.heads,
        "max_position_embeddings": 512,
        **spec.tokens,
    }
    return Kosmos2Config(vision_config=vision, text_config=text, latent_query_num=8, **spec.tokens)


def tiny_llava(spec: TinySpec) -> PretrainedConfig:
    tower = spec.vision_tower
    vision = _clip_like_vision(spec, "clip_vision_model" if tower == "clip" else "siglip_vision_model")
    return LlavaConfig(
        vision_config=vision,
        text_config=_llama_text(spec),
        image_token_id=spec.vocab_size,
        vision_feature_select_strategy="default" if tower == "clip" else "full",
        vision_feature_layer=-2 if tower == "clip" else -1,
        **spec.tokens,
    )


def _llama_text(spec: TinySpec) -> dict:
    """A Llama LM of the tiny shape (LLaVA's and SmolVLM2's), with the tokens' ids."""
    return {"model_type": "llama", **_decoder_sizes(spec), **spec.tokens}


def _decoder_sizes(spec: TinySpec) -> dict:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden,
        "intermediate_size": 2 * spec.hidden,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.heads,
    }


def _qwen_text(spec: TinySpec) -> dict:
    head_dim = spec.hidden // spec.heads
    quarter = head_dim // 4
    return {
        **_decoder_sizes(spec),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter],
        },
        **spec.tokens,
    }


def _qwen_ids(spec: TinySpec) -> dict:
    return {"image_token_id": spec.vocab_size, "video_token_id": spec.vocab_size + 1,
            "vision_start_token_id": spec.vocab_size + 2, **spec.tokens}


def tiny_qwen2vl(spec: TinySpec) -> PretrainedConfig:
    vision = {
        "depth": spec.layers,
        "embed_dim": spec.hidden,
        "hidden_size": spec.hidden,
        "num_heads": spec.heads,
        "mlp_ratio": 2,
        "patch_size": PATCH_SIZE // 2,
        "spatial_merge_size": 2,
        "temporal_patch_size": 1,
        "in_channels": 3,
    }
    return Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(spec), **_qwen_ids(spec))


def tiny_qwen2_5_vl(spec: TinySpec) -> PretrainedConfig:
    """Qwen2-VL's tiny shape with Qwen2.5-VL's tower: windows of 2x2 merged patches, full attention in the last block."""
    patch = PATCH_SIZE // 2
    vision = {
        "depth": spec.layers,
        "hidden_size": spec.hidden,
        "intermediate_size": 2 * spec.hidden,
        "num_heads": spec.heads,
        "out_hidden_size": spec.hidden,
        "patch_size": patch,
        "spatial_merge_size": 2,
        "temporal_patch_size": 1,
        "window_size": 4 * patch,
        "fullatt_block_indexes": [spec.layers - 1],
        "in_channels": 3,
    }
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(spec), **_qwen_ids(spec))


def tiny_smolvlm2(spec: TinySpec) -> PretrainedConfig:
    """SmolVLM2's shape: a SigLIP-style tower, a pixel shuffle of 2 (4 patches per LM token), a Llama LM."""
    vision = _clip_like_vision(spec, "smolvlm_vision")
    return SmolVLMConfig(vision_config=vision, text_config=_llama_text(spec), scale_factor=2, image_token_id=spec.vocab_size,
                         **spec.tokens)


TINY_CONFIGS = {
    "paligemma": tiny_paligemma,
    "kosmos2": tiny_kosmos2,
    "llava": tiny_llava,
    "qwen2vl": tiny_qwen2vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "smolvlm2": tiny_smolvlm2,
    "paligemma2": tiny_paligemma2,
}
