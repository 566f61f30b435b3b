"""Policy heads: action-token features ``[B, T, latent_num, hidden]`` (and the robot state
``[B, T, state_dim]`` where the model reads it) -> N future actions per frame, in the dataset's
action space: normalized values for the continuous dimensions, logits for the binary grippers.

``lstm`` and ``mlp`` regress the chunk (MSE); ``l1_chunk`` regresses it from N action query tokens
with an L1 loss (OpenVLA-OFT); ``flow`` generates it by flow matching (pi0). Every head predicts
the binary grippers as logits trained with BCE (``vla.model.loss``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from vla.model.config import ModelConfig


class ActionOutput(NamedTuple):
    """What the head (and so the ``VLAModel``) returns: a NamedTuple, a pytree of tensors that
    FSDP2 hooks on every torch version (a dataclass is opaque to it before 2.13)."""

    continuous: torch.Tensor  # [B, T, N, C], in [-1, 1] (normalized): the non-binary dimensions, in order
    gripper_logits: torch.Tensor  # [B, T, N, G]: one per binary gripper, > 0 means open (+1); G may be 0


class FlowTraining(NamedTuple):
    """What the flow head returns in training, given the labels: the velocity error and the gripper logits."""

    velocity_error: torch.Tensor  # [B, T, N, C]: v_theta(x_tau, tau) - (eps - a) at a drawn tau and noise eps
    gripper_logits: torch.Tensor  # [B, T, N, G]


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

    # Chunk steps one trunk output predicts: the whole chunk, except for l1_chunk (one per query token).
    steps_per_row: int | None = None

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__()
        h, n = cfg.head_hidden_size, cfg.fwd_pred_next_n
        self.fwd_pred_next_n = n
        self.steps = self.steps_per_row or n
        self.continuous_size, self.gripper_size = len(cfg.continuous_dims), len(cfg.binary_grippers)
        # the state joins each frame's features when it enters at the head
        self.feature_size = feature_size + (cfg.state_dim if cfg.state_input == "head" else 0)
        self.arm = self.build_arm(cfg)
        self.gripper = (nn.Sequential(*_mlp([h, h, h // 2 or 1, self.steps * self.gripper_size], cfg.head_dropout))
                        if self.gripper_size else None)

    def build_arm(self, cfg: ModelConfig) -> nn.Module:
        """Trunk output -> the continuous values of ``self.steps`` steps (tanh in forward)."""
        h = cfg.head_hidden_size
        return nn.Sequential(*_mlp([h, h, h // 2 or 1, self.steps * self.continuous_size], cfg.head_dropout))

    def trunk(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[B, T, feature_size]`` -> ``[B, T, head_hidden_size]``."""
        raise NotImplementedError

    def inputs(self, features: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """``[B, T, latent, hidden]`` (+ state) -> ``[B, T, feature_size]``: latent tokens concatenated, then the state."""
        b, t = features.shape[:2]
        inputs = features.reshape(b, t, -1)
        return inputs if state is None else torch.cat([inputs, state.to(inputs.dtype)], dim=-1)

    def gripper_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Trunk output ``[..., hidden]`` -> ``[..., steps, G]`` (a copy, never a view: FSDP2 warns on views,
        whose in-place change would skip its pre-backward hook)."""
        if self.gripper is None:
            return h.new_zeros(*h.shape[:-1], self.steps, 0)
        return self.gripper(h).unflatten(-1, (self.steps, self.gripper_size)).clone()

    def forward(self, features: torch.Tensor, state: torch.Tensor | None = None,
                actions: torch.Tensor | None = None) -> ActionOutput:
        """``actions [B, T, N, D]``: the labels, read in training by heads that train on them (``flow``)."""
        h = self.trunk(self.inputs(features, state))
        continuous = torch.tanh(self.arm(h).unflatten(-1, (self.steps, self.continuous_size)))
        return ActionOutput(continuous=continuous, gripper_logits=self.gripper_logits(h))


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


class L1ChunkHead(MLPHead):
    """OpenVLA-OFT's parallel decoding: the LM reads N action query tokens (``latent_num`` =
    ``fwd_pred_next_n`` [LRN] tokens); each query's last hidden state regresses its step of the chunk
    through one shared MLP, all N at once. No history (each frame on its own); trained with L1."""

    steps_per_row = 1

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size // cfg.latent_num)  # the trunk reads one query token (+ the state)

    def inputs(self, features: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """``[B, T, N, hidden]`` (+ state, repeated per query) -> ``[B, T, N, feature_size]``."""
        if state is None:
            return features
        return torch.cat([features, state.to(features.dtype).unsqueeze(2).expand(*features.shape[:3], -1)], dim=-1)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None = None,
                actions: torch.Tensor | None = None) -> ActionOutput:
        h = self.trunk(self.inputs(features, state))  # [B, T, N, hidden]: one row per query token
        logits = self.gripper(h).clone() if self.gripper is not None else h.new_zeros(*h.shape[:-1], 0)
        return ActionOutput(continuous=torch.tanh(self.arm(h)), gripper_logits=logits)


TIME_FREQUENCIES = 16  # sinusoidal features of the flow time tau (x2: sine and cosine)


class FlowHead(LSTMHead):
    """pi0's flow matching over the continuous dimensions of the whole chunk, conditioned on the
    [LRN] history (the LSTM trunk, from a zero state over the window).

    Training (labels given): tau ~ Beta(1.5, 1), eps ~ N(0, I), x_tau = tau * eps + (1 - tau) * a;
    the velocity network v(x_tau, tau, h) regresses eps - a (``FlowTraining``). Acting: x_1 = eps,
    then ``flow_steps`` Euler steps to tau = 0; eps is drawn from a generator seeded with
    ``flow_seed`` at every call, so the policy is a deterministic function of what it sees. The
    binary grippers are not generated: a gripper MLP on the same trunk gives their logits (BCE).
    """

    def __init__(self, cfg: ModelConfig, feature_size: int):
        super().__init__(cfg, feature_size)
        self.flow_steps, self.flow_seed = cfg.flow_steps, cfg.flow_seed
        self.continuous_dims = cfg.continuous_dims
        self.register_buffer("frequencies", torch.logspace(0, 3, TIME_FREQUENCIES) * math.pi, persistent=False)

    def build_arm(self, cfg: ModelConfig) -> nn.Module:
        """The velocity network: [trunk output, x_tau (the flattened chunk), time features] -> a velocity."""
        h, chunk = cfg.head_hidden_size, self.steps * self.continuous_size
        return nn.Sequential(*_mlp([h + chunk + 2 * TIME_FREQUENCIES, h, h, chunk], cfg.head_dropout))

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """x ``[B, T, N, C]`` at times tau ``[B, T, 1, 1]``, trunk output h ``[B, T, hidden]`` -> ``[B, T, N, C]``."""
        angles = tau.flatten(-2) * self.frequencies
        inputs = torch.cat([h, x.flatten(-2), angles.sin(), angles.cos()], dim=-1)
        return self.arm(inputs).unflatten(-1, x.shape[-2:])

    def draw_time_and_noise(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tau ``[B, T, 1, 1]`` ~ Beta(1.5, 1) and eps ~ N(0, I) shaped ``like`` (the global RNG)."""
        beta = torch.distributions.Beta(like.new_tensor(1.5), like.new_tensor(1.0))
        return beta.sample((*like.shape[:2], 1, 1)), torch.randn_like(like)

    def sample(self, h: torch.Tensor) -> torch.Tensor:
        """The chunk ``[B, T, N, C]`` from ``flow_steps`` Euler steps of the velocity, from seeded noise."""
        generator = torch.Generator(device=h.device).manual_seed(self.flow_seed)
        eps = torch.randn(self.steps, self.continuous_size, generator=generator, device=h.device, dtype=h.dtype)
        x = eps.expand(*h.shape[:2], -1, -1)  # the same noise for every frame: an action depends on its inputs only
        dt = 1.0 / self.flow_steps
        for k in range(self.flow_steps):
            tau = h.new_full((*h.shape[:2], 1, 1), 1.0 - k * dt)
            x = x - dt * self.velocity(x, tau, h)
        return x.clamp(-1.0, 1.0)

    def forward(self, features: torch.Tensor, state: torch.Tensor | None = None,
                actions: torch.Tensor | None = None) -> ActionOutput | FlowTraining:
        """Training with ``actions`` ``[B, T, N, D]``: ``FlowTraining``; otherwise the sampled chunk."""
        h = self.trunk(self.inputs(features, state))
        logits = self.gripper_logits(h)
        if not (self.training and actions is not None):
            return ActionOutput(continuous=self.sample(h), gripper_logits=logits)
        target = actions[..., self.continuous_dims].to(h.dtype)
        tau, eps = self.draw_time_and_noise(target)
        x_tau = tau * eps + (1 - tau) * target
        return FlowTraining(velocity_error=self.velocity(x_tau, tau, h) - (eps - target), gripper_logits=logits)


HEADS: dict[str, type[ActionHead]] = {"lstm": LSTMHead, "mlp": MLPHead, "l1_chunk": L1ChunkHead, "flow": FlowHead}


def build_head(cfg: ModelConfig, hidden_size: int) -> ActionHead:
    """The head named by ``cfg.head``, reading ``latent_num`` action tokens of ``hidden_size`` (and
    ``cfg.state_dim`` state values) per frame."""
    return HEADS[cfg.head](cfg, cfg.latent_num * hidden_size)
