"""PaliGemma 2: PaliGemma's SigLIP tower and projector with a Gemma-2 LM (logit soft-capping, sliding-window layers)."""

from __future__ import annotations

from vla.model.backbones.paligemma import PaliGemmaBackbone


class PaliGemma2Backbone(PaliGemmaBackbone):
    """The PaliGemma class itself: only the text config differs (``gemma2``); the model builds the
    sliding-window and full masks its alternating layers need."""

    family = "paligemma2"
    text_model_type = "gemma2"
