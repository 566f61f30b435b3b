"""Acting one observation at a time, the way training windows see the history.

``vla.policy.Policy`` serves through this class; it is the one implementation of acting.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import torch

from vla.model.vla_model import VLAModel


class ActionStepper:
    """Stateful rollout API over ``E`` environments, each with its own history.

    Each ``step`` encodes the new frame once and keeps each environment's last ``window_size``
    action-token features; the head then re-runs from a zero state over those frames, exactly
    as a training window ending at this frame would (RoboVLMs), and the first predicted step
    is returned. ``reset(i)`` restarts environment ``i`` only.
    """

    def __init__(self, model: VLAModel):
        self.model = model
        self.window_size = model.config.window_size
        self._history: list[list[torch.Tensor]] = []  # per environment: features [latent, hidden]
        self._sessions: dict[Hashable, list[torch.Tensor]] = {}  # per session key (``sessions``)

    def reset(self, env_index: int | None = None) -> None:
        """Forget the history of every environment (the count may then change), or of ``env_index`` only."""
        if env_index is None:
            self._history = []
        elif env_index < len(self._history):
            self._history[env_index] = []

    @contextmanager
    def sessions(self, keys: list[Hashable]) -> Iterator[None]:
        """Within the block, ``step``'s environment ``i`` is the session ``keys[i]``: its own history,
        kept across blocks until ``end_session`` (a new key starts empty). Any subset of the open
        sessions, in any order, steps in one forward pass; the positional environments are untouched.
        """
        saved, self._history = self._history, [self._sessions.setdefault(key, []) for key in keys]
        try:
            yield
        finally:
            self._history = saved

    def end_session(self, key: Hashable) -> None:
        """Forget the history of session ``key`` (its next step starts a new episode)."""
        self._sessions.pop(key, None)

    @torch.no_grad()
    def step(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Images ``[E, V, 3, H, W]`` uint8 + instruction ``[E, L]`` -> ``[E, 7]``.

        Dims 0-5: the normalized pose of the first predicted step; dim 6: its gripper logit.
        """
        count = images.shape[0]
        if not self._history:
            self._history = [[] for _ in range(count)]
        if count != len(self._history):
            raise ValueError(f"got {count} observations for {len(self._history)} environments; "
                             "call reset() to change the number of environments")
        features = self.model.action_features(images.unsqueeze(1), input_ids, attention_mask)[:, 0].float()
        for history, frame in zip(self._history, features):
            history.append(frame)
            del history[:-self.window_size]
        out = torch.empty(count, 7, device=features.device)
        for length in {len(h) for h in self._history}:  # one head call per history length
            envs = [i for i, h in enumerate(self._history) if len(h) == length]
            head = self.model.head(torch.stack([torch.stack(self._history[i]) for i in envs]))
            out[envs] = torch.cat([head.pose[:, -1, 0], head.gripper_logits[:, -1, :1]], dim=-1)
        return out
