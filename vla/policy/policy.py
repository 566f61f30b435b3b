"""A trained policy loaded from an export folder (or a training checkpoint): observations in,
robot actions out.

    policy = Policy.load("~/vla_runs/demo/export")          # device="cuda" runs in bf16
    policy.reset()
    action = policy.act({"images": {"static": rgb, "wrist": rgb}, "instruction": "pick up the red block"})
    # action: [D] in the dataset's units (binary grippers -1 / +1); a policy trained with the
    # robot state also takes "state": [S] floats (policy.state_dim), in the dataset's units

The same object serves evaluation and deployment (openpi style); no Ray, no FSDP.
Preprocessing reuses the training pipeline's own functions (image resize straight to the
size the model runs at, tokenization), and acting is ``vla.model.ActionStepper``'s (RoboVLMs
inference: the last ``window_size`` frames' action-token features per environment, the head
re-run from a zero state over them; ``act`` executes the first predicted step,
``act_chunk_batch`` returns the whole chunk).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla.action_space import ActionSpace
from vla.config import Config, resolve_config
from vla.data.episodes import resize_image
from vla.data.pipeline import load_tokenizer
from vla.data.stats import Normalization
from vla.data.transforms import Tokenize
from vla.model import ActionStepper, VLAModel, build_tokenizer, load_export
from vla.model.checkpoint import load_checkpoint_model
from vla.model.export import read_normalization, read_run_config
from vla.storage import localize

Observation = dict  # {"images": {camera: HxWx3 uint8}, "instruction": str, "state": [S] floats}


def load_run_config(export_dir: str | Path) -> Config:
    """The full resolved run config saved with an export (cameras, instruction length, data path)."""
    return resolve_config(read_run_config(export_dir))


@dataclass
class Preprocessor:
    """Observations -> model inputs, exactly as the training windows were built."""

    cameras: list[str]
    image_size: int
    tokenize: Tokenize

    def images(self, observations: list[Observation]) -> torch.Tensor:
        """``E`` observations -> uint8 ``[E, V, 3, H, W]`` in the training camera order."""
        frames = [[resize_image(obs["images"][camera], self.image_size) for camera in self.cameras]
                  for obs in observations]
        return torch.from_numpy(np.ascontiguousarray(np.asarray(frames).transpose(0, 1, 4, 2, 3)))

    def instructions(self, observations: list[Observation]) -> tuple[torch.Tensor, torch.Tensor]:
        """``E`` instructions -> ``input_ids`` and ``attention_mask`` ``[E, max_text_len]``."""
        encoded = [self.tokenize({"instruction": obs["instruction"]}) for obs in observations]
        ids = np.stack([e["input_ids"] for e in encoded])
        mask = np.stack([e["attention_mask"] for e in encoded])
        return torch.from_numpy(ids), torch.from_numpy(mask)


def observed_state(observations: list[Observation], state_dim: int) -> np.ndarray:
    """The ``[E, state_dim]`` float32 states of ``observations``; a missing or wrong-length state is
    a one-line ``ValueError`` naming the field and the length expected."""
    states = []
    for obs in observations:
        if obs.get("state") is None:
            raise ValueError(f"state: missing; this policy reads the robot state, {state_dim} floats")
        state = np.asarray(obs["state"], np.float32).reshape(-1)
        if len(state) != state_dim:
            raise ValueError(f"state: {len(state)} values, expected {state_dim}")
        states.append(state)
    return np.stack(states)


class Policy:
    """``reset(env_index=None)``, ``act(obs) -> [D]``, ``act_batch(observations) -> [E, D]``,
    ``act_chunk_batch(observations) -> [E, N, D]`` (the whole predicted chunk).

    Actions are in the dataset's units (un-normalized with the training statistics), binary
    grippers -1 (close) or +1 (open). ``act_batch`` keeps one history per environment index.
    ``action_space``, ``state_dim`` (0: no state read), ``chunk_length``, ``cameras`` and
    ``image_size`` say what the policy takes and returns.
    """

    def __init__(self, model: VLAModel, normalization: Normalization, preprocessor: Preprocessor,
                 device: torch.device):
        self.model = model
        self.normalization = normalization
        self.preprocessor = preprocessor
        self.device = device
        cfg = model.config
        self.window_size = cfg.window_size
        self.action_space = ActionSpace(dim=cfg.action_dim, binary_grippers=tuple(cfg.binary_grippers))
        self.state_dim = cfg.state_dim
        self.chunk_length = cfg.fwd_pred_next_n
        self.cameras = list(preprocessor.cameras)
        self.image_size = preprocessor.image_size
        self.stepper = ActionStepper(model)

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> Policy:
        """The policy of an export folder; ``dtype`` defaults to bf16 on GPU and fp32 on CPU.

        The backbone is read straight into ``dtype`` (one copy of the weights); the head stays
        in fp32 (as in training). Frames are resized once, to the size the model runs at.
        """
        export_dir = Path(localize(str(export_dir)))  # an s3:// export is cached locally
        run = load_run_config(export_dir)
        target = torch.device(device)
        dtype = dtype or (torch.bfloat16 if target.type == "cuda" else torch.float32)
        model, _ = load_export(export_dir, dtype=dtype)
        model.to(target)
        return cls.of_run(model, run, read_normalization(export_dir), load_tokenizer(str(export_dir)), target)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: Path, run: Config, normalization: dict, device: str = "cpu") -> Policy:
        """The policy of a complete training checkpoint of ``run`` (sharded, any world size), as
        ``load`` builds it from an export; ``normalization`` is the run's ``normalization.json``.
        bf16 on GPU, fp32 on CPU, the head in fp32."""
        model = load_checkpoint_model(checkpoint_dir, run.model)
        target = torch.device(device)
        model.to(device=target, dtype=torch.bfloat16 if target.type == "cuda" else torch.float32)
        model.head.float()
        return cls.of_run(model.eval(), run, normalization, build_tokenizer(run.model), target)

    @classmethod
    def of_run(cls, model: VLAModel, run: Config, normalization: dict, tokenizer, device: torch.device) -> Policy:
        """The policy of ``model`` with the preprocessing of ``run`` (its cameras and instruction length)."""
        preprocessor = Preprocessor(run.data.cameras, model.image_size, Tokenize(tokenizer, run.data.max_text_len))
        return cls(model, Normalization.from_dict(normalization), preprocessor, device)

    def reset(self, env_index: int | None = None) -> None:
        """Forget the history of every environment, or of ``env_index`` only."""
        self.stepper.reset(env_index)

    def act(self, observation: Observation) -> np.ndarray:
        """One environment's action for ``observation``: ``[D]`` float32."""
        return self.act_batch([observation])[0]

    def act_batch(self, observations: list[Observation]) -> np.ndarray:
        """One step of ``E`` environments (observation ``i`` belongs to environment ``i``): ``[E, D]``,
        the first step of each predicted chunk."""
        return self.act_chunk_batch(observations)[:, 0]

    def act_chunk_batch(self, observations: list[Observation]) -> np.ndarray:
        """One step of ``E`` environments: the whole chunk each predicts, ``[E, N, D]`` float32."""
        return self.actions_from_output(self.infer(observations))

    @torch.no_grad()
    def infer(self, observations: list[Observation]) -> torch.Tensor:
        """The model's raw chunk for one step of ``E`` environments: ``[E, N, D]`` of normalized
        continuous values and binary-gripper logits (``ActionStepper.step``)."""
        state = self.normalized_state(observations)
        images = self.preprocessor.images(observations).to(self.device)
        ids, mask = (t.to(self.device) for t in self.preprocessor.instructions(observations))
        return self.stepper.step(images, ids, mask, state)

    def normalized_state(self, observations: list[Observation]) -> torch.Tensor | None:
        """The observations' states ``[E, S]`` normalized as in training, on the device; None when
        the policy reads no state."""
        if not self.state_dim:
            return None
        state = self.normalization.state.normalize(observed_state(observations, self.state_dim))
        return torch.from_numpy(state).to(self.device)

    def actions_from_output(self, output: torch.Tensor) -> np.ndarray:
        """Raw ``[..., D]`` model output -> actions: continuous dims un-normalized, binary grippers
        +1 where the logit is > 0 (sigmoid > 0.5) else -1."""
        actions = output.float().cpu().numpy().copy()
        grippers = list(self.action_space.binary_grippers)
        actions[..., grippers] = np.where(actions[..., grippers] > 0, 1.0, -1.0)
        return self.normalization.action.unnormalize(actions).astype(np.float32)

    def act_chunk_sessions(self, keys: list[Hashable], observations: list[Observation]) -> np.ndarray:
        """``act_chunk_batch`` where observation ``i`` continues session ``keys[i]``'s history
        (``ActionStepper.sessions``): one forward pass for any subset of sessions. ``[E, N, D]``."""
        with self.stepper.sessions(keys):
            return self.act_chunk_batch(observations)

    def end_session(self, key: Hashable) -> None:
        """Forget session ``key``'s history."""
        self.stepper.end_session(key)
