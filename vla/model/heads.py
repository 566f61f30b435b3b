"""Policy heads: action-token features ``[B, T, latent_num, hidden]`` -> N future 7-DOF actions per frame."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vla.model.config import ModelConfig


class ActionOutput(NamedTuple):
    """What the head (and so the ``VLAModel``) returns: a NamedTuple, a pytree of tensors that
    FSDP2 hooks on every torch version (a dataclass is opaque to it before 2.13)."""

    pose: torch.Tensor  # [B, T, N, 6], in [-1, 1] (normalized)
    gripper_logits: torch.Tensor  # [B, T, N], > 0 means open (+1)


def _mlp(sizes: list[int], dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return layers


class ActionHead(nn.Module):
    """A trunk over per-frame features, then an arm MLP (tanh, N*6 pose values) and a gripper MLP (N logits)."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__()
        h, n = cfg.head_hidden_size, cfg.fwd_pred_next_n
        self.fwd_pred_next_n = n
        self.feature_size = feature_size
        self.arm = nn.Sequential(*_mlp([h, h, h // 2 or 1, n * 6], cfg.head_dropout))  # tanh in forward
        self.gripper = nn.Sequential(*_mlp([h, h, h // 2 or 1, n], cfg.head_dropout))

    def trunk(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, T, feature_size]`` -> ``[B, T, head_hidden_size]``."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> ActionOutput:
        b, t = features.shape[:2]
        h = self.trunk(features.reshape(b, t, -1))  # latent tokens concatenated
        # Neither output may be a view (tanh after the reshape; a copy of the few gripper logits,
        # which nn.Linear returns as a view of its 2-D product): FSDP2 warns on views, whose
        # in-place change would skip its pre-backward hook.
        pose = torch.tanh(self.arm(h).unflatten(-1, (self.fwd_pred_next_n, 6)))
        return ActionOutput(pose=pose, gripper_logits=self.gripper(h).clone())


class LSTMHead(ActionHead):
    """Fuses the history: an LSTM over the T frames of a window, from a zero state."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size)
        self.lstm = nn.LSTM(
            feature_size,
            cfg.head_hidden_size,
            num_layers=cfg.head_num_layers,
            dropout=cfg.head_dropout if cfg.head_num_layers > 1 else 0.0,
            batch_first=True,
        )

    def trunk(self, features: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(features)
        return out


class MLPHead(ActionHead):
    """No history: each frame on its own (a baseline)."""

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size)
        sizes = [feature_size] + [cfg.head_hidden_size] * cfg.head_num_layers
        self.mlp = nn.Sequential(*_mlp(sizes, cfg.head_dropout), nn.ReLU())

    def trunk(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


HEADS: dict[str, type[ActionHead]] = {"lstm": LSTMHead, "mlp": MLPHead}


def build_head(cfg: ModelConfig, hidden_size: int) -> ActionHead:
    """The head named by ``cfg.head``, reading ``latent_num`` action tokens of ``hidden_size`` per frame."""
    return HEADS[cfg.head](cfg, cfg.latent_num * hidden_size)
