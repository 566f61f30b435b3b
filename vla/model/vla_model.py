"""The policy: a VLM backbone reads each frame with an [LRN] action token; a head turns those into actions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from vla.model.backbones import Backbone, build_backbone, image_size_for
from vla.model.config import ModelConfig
from vla.model.heads import ActionOutput, FlowTraining, build_head
from vla.model.loss import action_loss
from vla.model.sequence import assemble, gather_positions
from vla.model.tokenizer import build_tokenizer
from vla.model.trainable import add_lora, apply_trainable


class VLAModel(nn.Module):
    """Images + instruction (+ the robot state) -> ``ActionOutput``; ``loss`` scores it against action labels.

    Every frame of a window runs through the VLM on its own ("post" history: ``B*T``
    sequences, the instruction repeated); the head then fuses the T action-token features.
    With ``config.state_dim`` > 0 each frame's normalized state joins its features at the head
    (``state_input: head``) or enters the LM as one projected token before ``[LRN]`` (``token``).
    """

    def __init__(self, cfg: ModelConfig, backbone: Backbone):
        super().__init__()
        self.config = cfg
        self.backbone = backbone
        hidden = backbone.hidden_size
        self.action_token = nn.Parameter(torch.randn(cfg.latent_num, hidden) * 0.02)
        self.state_token = nn.Linear(cfg.state_dim, hidden) if cfg.state_dim and cfg.state_input == "token" else None
        self.head = build_head(cfg, hidden)
        self.register_buffer("image_mean", torch.tensor(backbone.image_mean).reshape(3, 1, 1))
        self.register_buffer("image_std", torch.tensor(backbone.image_std).reshape(3, 1, 1))
        self.image_size: int = image_size_for(cfg, backbone.hf_config)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 3, H, W]`` -> normalized floats at ``image_size`` (resized when H, W differ)."""
        x = images.to(self.image_mean.dtype) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.image_mean) / self.image_std

    def action_features(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images ``[B, T, V, 3, H, W]`` uint8 + instruction ``[B, L]`` (+ ``state [B, T, S]`` when it
        enters as a token) -> ``[B, T, latent_num, hidden]``."""
        b, t, v = images.shape[:3]
        backbone = self.backbone
        vision = backbone.encode_images(self.pixel_values(images.flatten(0, 2)))  # [B*T*V, K, H]
        vision = vision.reshape(b * t, -1, vision.shape[-1])
        text = backbone.embed_text(input_ids).repeat_interleave(t, dim=0)
        text_mask = attention_mask.repeat_interleave(t, dim=0)
        if self.state_token is not None:  # one more real token after the instruction: right before [LRN]
            state = self.checked_state(state).flatten(0, 1).to(self.state_token.weight.dtype)
            state_embeds = self.state_token(state).to(text.dtype)
            text = torch.cat([text, state_embeds.unsqueeze(1)], dim=1)
            text_mask = torch.cat([text_mask, text_mask.new_ones(b * t, 1)], dim=1)
        special_ids = torch.tensor(backbone.special_ids, device=input_ids.device)
        seq = assemble(
            vision=vision.to(text.dtype),
            text=text,
            text_mask=text_mask,
            action_token=self.action_token.to(text.dtype),
            special=backbone.embed_text(special_ids),
            num_views=v,
            fill_zero=self.config.fill_zero,
        )
        hidden = backbone.run_language_model(seq.embeds, seq.attention_mask, seq.image_index)
        features = gather_positions(hidden, seq.action_positions)
        return features.reshape(b, t, *features.shape[1:])

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                state: torch.Tensor | None = None, actions: torch.Tensor | None = None) -> ActionOutput | FlowTraining:
        """``state [B, T, state_dim]``: required when the model reads the state, ignored otherwise.
        ``actions [B, T, N, D]``: the labels; in training the flow head trains on them (``FlowTraining``)."""
        state = self.checked_state(state)
        features = self.action_features(images, input_ids, attention_mask, state)
        return self.head(features.float(), self.head_state(state), actions)

    def head_state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        """The state the head reads (where it enters at the head), else None."""
        return state if self.config.state_input == "head" else None

    def checked_state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        """``state`` as float when the model reads one (its length checked), else None."""
        if not self.config.state_dim:
            return None
        if state is None or state.shape[-1] != self.config.state_dim:
            got = "none" if state is None else f"{state.shape[-1]} values"
            raise ValueError(f"state: the model reads a state of {self.config.state_dim} values per frame, got {got}")
        return state.float()

    def loss(self, output: ActionOutput | FlowTraining, actions: torch.Tensor,
             action_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss`` (differentiable), ``loss_arm``, ``loss_gripper``, ``pose_error`` (not for ``FlowTraining``),
        and ``gripper_accuracy`` when the action has binary grippers."""
        cfg = self.config
        return action_loss(output, actions, action_mask, cfg.lambda_gripper, cfg.binary_grippers,
                           l1=cfg.head == "l1_chunk")


def build_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    hf_config: PretrainedConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    backbone_on_meta: bool = False,
) -> VLAModel:
    """The policy of ``cfg`` with its freeze options applied, held in ``dtype`` (the head in fp32).

    The backbone comes from ``hf_config`` (random weights, for loading an export), else
    ``cfg.pretrained_path`` (local directory, no network, read in ``dtype``), else a tiny config
    matched to the tokenizer (``build_tokenizer(cfg)`` unless given). ``backbone_on_meta``
    builds the backbone's parameters on the meta device, to be loaded by ``vla.model.loading``.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    backbone = build_backbone(cfg, tokenizer, hf_config, dtype=dtype, on_meta=backbone_on_meta)
    if cfg.lora_rank > 0:
        add_lora(backbone, cfg)
    model = VLAModel(cfg, backbone)
    if dtype != torch.float32:
        for param in model.parameters():  # buffers keep their dtype (rotary frequencies stay fp32)
            param.data = param.data.to(dtype)
        model.head.float()  # as in training: an LSTM in bf16 fails on fp32 inputs
    apply_trainable(model, cfg)
    return model
