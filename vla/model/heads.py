"""Policy heads: action-token features ``[B, T, latent_num, hidden]`` (and the robot state
``[B, T, state_dim]`` where the model reads it) -> N future actions per frame, in the dataset's
action space: normalized values for the continuous dimensions, logits for the binary grippers."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vla.model.config import ModelConfig


class ActionOutput(NamedTuple):
    """What the head (and so the ``VLAModel``) returns: a NamedTuple, a pytree of tensors that
    FSDP2 hooks on every torch version (a dataclass is opaque to it before 2.13)."""

    continuous: torch.Tensor  # [B, T, N, C], in [-1, 1] (normalized): the non-binary dimensions, in order
    gripper_logits: torch.Tensor  # [B, T, N, G]: one per binary gripper, > 0 means open (+1); G may be 0


def join_actions(output: ActionOutput, cfg: ModelConfig) -> torch.Tensor:
    """``[..., D]`` in the dataset's dimension order: continuous values and gripper logits put back."""
    joined = output.continuous.new_empty(*output.continuous.shape[:-1], cfg.action_dim)
    joined[..., cfg.continuous_dims] = output.continuous
    joined[..., cfg.binary_grippers] = output.gripper_logits
    return joined


def _mlp(sizes: list[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return layers


class ActionHead(nn.Module):
    """A trunk over per-frame inputs (the action-token features, then the state when read), then an
    arm MLP (tanh, N*C continuous values) and, when the action has binary grippers, a gripper MLP
    (N*G logits)."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__()
        h, n = cfg.head_hidden_size, cfg.fwd_pred_next_n
        self.fwd_pred_next_n = n
        self.continuous_size, self.gripper_size = len(cfg.continuous_dims), len(cfg.binary_grippers)
        # the state joins each frame's features when it enters at the head
        self.feature_size = feature_size + (cfg.state_dim if cfg.state_input == "head" else 0)
        self.arm = nn.Sequential(*_mlp([h, h, h // 2 or 1, n * self.continuous_size], cfg.head_dropout))
        self.gripper = (nn.Sequential(*_mlp([h, h, h // 2 or 1, n * self.gripper_size], cfg.head_dropout))
                        if self.gripper_size else None)

    def trunk(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, T, feature_size]`` -> ``[B, T, head_hidden_size]``."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, state: torch.Tensor | None = None) -> ActionOutput:
        b, t = features.shape[:2]
        inputs = features.reshape(b, t, -1)  # latent tokens concatenated
        if state is not None:
            inputs = torch.cat([inputs, state.to(inputs.dtype)], dim=-1)
        h = self.trunk(inputs)
        # Neither output may be a view (tanh after the reshape; a copy of the gripper logits):
        # FSDP2 warns on views, whose in-place change would skip its pre-backward hook.
        n = self.fwd_pred_next_n
        continuous = torch.tanh(self.arm(h).unflatten(-1, (n, self.continuous_size)))
        logits = (self.gripper(h).unflatten(-1, (n, self.gripper_size)).clone() if self.gripper is not None
                  else h.new_zeros(b, t, n, 0))
        return ActionOutput(continuous=continuous, gripper_logits=logits)


class LSTMHead(ActionHead):
    """Fuses the history: an LSTM over the T frames of a window, from a zero state."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size)
        self.lstm = nn.LSTM(
            self.feature_size,
            cfg.head_hidden_size,
            num_layers=cfg.head_num_layers,
            dropout=cfg.head_dropout if cfg.head_num_layers > 1 else 0.0,
            batch_first=True,
        )

    def trunk(self, inputs: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(inputs)
        return out


class MLPHead(ActionHead):
    """No history: each frame on its own (a baseline)."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size)
        sizes = [self.feature_size] + [cfg.head_hidden_size] * cfg.head_num_layers
        self.mlp = nn.Sequential(*_mlp(sizes, cfg.head_dropout), nn.ReLU())

    def trunk(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.mlp(inputs)


HEADS: dict[str, type[ActionHead]] = {"lstm": LSTMHead, "mlp": MLPHead}


def build_head(cfg: ModelConfig, hidden_size: int) -> ActionHead:
    """The head named by ``cfg.head``, reading ``latent_num`` action tokens of ``hidden_size`` (and
    ``cfg.state_dim`` state values) per frame."""
    return HEADS[cfg.head](cfg, cfg.latent_num * hidden_size)
