"""Acting one observation at a time, the way training windows see the history."""

from __future__ import annotations

import torch

from vla.model.vla_model import VLAModel


class ActionStepper:
    """Stateful rollout API over ``E`` environments in lockstep.

    Each ``step`` encodes the new frame once and keeps the last ``window_size`` action-token
    features; the head then re-runs from a zero state over those frames, exactly as a
    training window ending at this frame would, and the first predicted step is returned.
    """

    def __init__(self, model: VLAModel):
        self.model = model
        self.window_size = model.config.window_size
        self._features: list[torch.Tensor] = []

    def reset(self) -> None:
        """Start new episodes: forget the history."""
        self._features = []

    @torch.no_grad()
    def step(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Images ``[E, V, 3, H, W]`` uint8 + instruction ``[E, L]`` -> ``[E, 7]``.

        Dims 0-5: the normalized pose of the first predicted step; dim 6: its gripper logit.
        """
        frame = self.model.action_features(images.unsqueeze(1), input_ids, attention_mask)  # [E, 1, latent, H]
        self._features = (self._features + [frame])[-self.window_size :]
        out = self.model.head(torch.cat(self._features, dim=1).float())
        return torch.cat([out.pose[:, -1, 0], out.gripper_logits[:, -1, :1]], dim=-1)
