"""What the policy model is: backbone, action token, history window, head, loss, what trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vla.typed_config import check

BACKBONES = ("paligemma", "kosmos2", "llava", "qwen2vl", "qwen2_5_vl", "smolvlm2", "paligemma2")
HEADS = ("lstm", "mlp", "l1_chunk", "flow")


@dataclass
class ModelConfig:
    # Backbone: a VLM family, loaded from a local Hugging Face directory (`pretrained_path`)
    # or, when that is null, built tiny from a config (tests and the demo).
    backbone: Literal["paligemma", "kosmos2", "llava", "qwen2vl", "qwen2_5_vl", "smolvlm2", "paligemma2"] = "paligemma"
    pretrained_path: str | None = None
    lm_layers: int | None = None  # keep only the LM's first K decoder blocks (SmolVLA: 16); null: all
    tiny_hidden_size: int = 64
    tiny_num_layers: int = 2
    tiny_vision_tower: Literal["clip", "siglip"] = "clip"  # tiny LLaVA's tower
    image_size: int = 32  # images are resized to this (a pretrained backbone's own size wins)
    num_views: int = 2  # cameras per frame, e.g. static + wrist
    # Sequence: [BOS] [vision tokens of every view] [instruction] [LRN x latent_num] [EOS]
    latent_num: int = 1
    fill_zero: bool = False  # mask the action token out of attention (RoboVLMs option)
    # History and prediction
    window_size: int = 8  # T frames of history
    fwd_pred_next_n: int = 1  # N future steps predicted per frame
    # Policy head
    # lstm: history, MSE; mlp: per frame, MSE; l1_chunk: per frame, the chunk from latent_num =
    # fwd_pred_next_n action query tokens, L1 (OpenVLA-OFT); flow: history, flow matching (pi0)
    head: Literal["lstm", "mlp", "l1_chunk", "flow"] = "lstm"
    head_hidden_size: int = 256
    head_num_layers: int = 2
    head_dropout: float = 0.0
    flow_steps: int = 10  # Euler steps of the flow head when it acts
    flow_seed: int = 0  # seeds the flow head's acting noise: the policy is deterministic given it
    # Action space and state, filled from the dataset when a run starts (vla.action_space); the
    # defaults are the 7-DOF arm without state (what exports written before them hold)
    action_dim: int = 7
    binary_grippers: list[int] = field(default_factory=lambda: [6])  # -1/+1 dims, trained with BCE
    state_dim: int = 0  # length of the robot state read per frame; 0: none
    use_state: bool | None = None  # read the dataset's state; None: when the dataset has one
    # Where the state enters: "head" joins it to each frame's [LRN] features; "token" projects it to
    # one LM token right before [LRN] (measured on the hidden-state task: docs/evaluation.md)
    state_input: Literal["head", "token"] = "head"
    # Loss: MSE over the continuous dims + lambda_gripper x BCE over the binary grippers
    lambda_gripper: float = 0.01
    # What trains (the action token and the head always do)
    freeze_backbone: bool = False
    train_vision: bool = True
    train_text_embedding: bool = True
    lora_rank: int = 0  # > 0 adds LoRA adapters to the LM (needs the `lora` extra: peft)
    lora_alpha: int = 16
    lora_dropout: float = 0.0

    def validate(self) -> None:
        check(self.tiny_hidden_size > 0, "tiny_hidden_size", "must be > 0")
        check(self.tiny_num_layers > 0, "tiny_num_layers", "must be > 0")
        check(self.lm_layers is None or self.lm_layers >= 1, "lm_layers", "must be >= 1 or null")
        check(self.image_size >= 8, "image_size", "must be >= 8 pixels")
        check(self.num_views >= 1, "num_views", "must be >= 1")
        check(self.latent_num >= 1, "latent_num", "must be >= 1")
        check(self.window_size >= 1, "window_size", "must be >= 1")
        check(self.fwd_pred_next_n >= 1, "fwd_pred_next_n", "must be >= 1")
        check(self.head_hidden_size > 0, "head_hidden_size", "must be > 0")
        check(self.head_num_layers >= 1, "head_num_layers", "must be >= 1")
        check(0.0 <= self.head_dropout < 1.0, "head_dropout", "must be in [0, 1)")
        check(self.flow_steps >= 1, "flow_steps", "must be >= 1")
        check(self.head != "l1_chunk" or self.latent_num == self.fwd_pred_next_n, "latent_num",
              f"head l1_chunk reads one action query token per chunk step: set latent_num = fwd_pred_next_n "
              f"({self.fwd_pred_next_n}), got {self.latent_num}")
        check(self.action_dim >= 1, "action_dim", "must be >= 1")
        check(all(0 <= i < self.action_dim for i in self.binary_grippers), "binary_grippers",
              f"must be dimensions of the action (0..{self.action_dim - 1}), got {self.binary_grippers}")
        check(len(set(self.binary_grippers)) == len(self.binary_grippers), "binary_grippers", "has a repeated dimension")
        check(self.state_dim >= 0, "state_dim", "must be >= 0")
        check(self.lambda_gripper >= 0.0, "lambda_gripper", "must be >= 0")
        check(self.lora_rank >= 0, "lora_rank", "must be >= 0")

    @property
    def continuous_dims(self) -> list[int]:
        """The regressed action dimensions (all but the binary grippers), in order."""
        return [i for i in range(self.action_dim) if i not in self.binary_grippers]
