"""Acting one observation at a time, the way training windows see the history.

``vla.policy.Policy`` serves through this class; it is the one implementation of acting.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import torch

from vla.model.heads import join_actions
from vla.model.vla_model import VLAModel


class ActionStepper:
    """Stateful rollout API over ``E`` environments, each with its own history.

    Each ``step`` encodes the new frame once and keeps each environment's last ``window_size``
    action-token features (with the frame's state, where the model reads it); the head then
    re-runs from a zero state over those frames, exactly as a training window ending at this
    frame would (RoboVLMs), and the chunk it predicts at the newest frame is returned.
    ``reset(i)`` restarts environment ``i`` only.
    """

    def __init__(self, model: VLAModel):
        self.model = model
        self.window_size = model.config.window_size
        # per environment, per frame: features [latent, hidden] and the state [state_dim] (or None)
        self._history: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = []
        self._sessions: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}  # ``sessions``

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
    def step(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             state: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``[E, V, 3, H, W]`` uint8 + instruction ``[E, L]`` (+ normalized ``state [E, S]``
        where the model reads it) -> the chunk ``[E, N, D]`` predicted at this frame, in the
        dataset's dimension order: normalized continuous values, logits for binary grippers."""
        count = images.shape[0]
        if not self._history:
            self._history = [[] for _ in range(count)]
        if count != len(self._history):
            raise ValueError(f"got {count} observations for {len(self._history)} environments; "
                             "call reset() to change the number of environments")
        state = self.model.checked_state(None if state is None else state.unsqueeze(1))
        features = self.model.action_features(images.unsqueeze(1), input_ids, attention_mask, state)[:, 0].float()
        state = self.model.head_state(state)
        for i, (history, frame) in enumerate(zip(self._history, features)):
            history.append((frame, None if state is None else state[i, 0]))
            del history[:-self.window_size]
        cfg = self.model.config
        out = torch.empty(count, cfg.fwd_pred_next_n, cfg.action_dim, device=features.device)
        for length in {len(h) for h in self._history}:  # one head call per history length
            envs = [i for i, h in enumerate(self._history) if len(h) == length]
            frames = torch.stack([torch.stack([f for f, _ in self._history[i]]) for i in envs])
            states = None if state is None else torch.stack([torch.stack([s for _, s in self._history[i]])
                                                             for i in envs])
            out[envs] = join_actions(self.model.head(frames, states), cfg)[:, -1]
        return out
