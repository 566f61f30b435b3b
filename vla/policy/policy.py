"""A trained policy loaded from an export folder: observations in, robot actions out.

    policy = Policy.load("~/vla_runs/demo/export")          # device="cuda" runs in bf16
    policy.reset()
    action = policy.act({"images": {"static": rgb, "wrist": rgb}, "instruction": "pick up the red block"})

The same object serves evaluation and deployment (openpi style); no Ray, no FSDP.
Preprocessing reuses the training pipeline's own functions (image resize straight to the
size the model runs at, tokenization), and acting is ``vla.model.ActionStepper``'s (RoboVLMs
inference: the last ``window_size`` frames' action-token features per environment, the head
re-run from a zero state over them, the first predicted step executed).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla.config import Config, resolve_config
from vla.data.episodes import resize_image
from vla.data.pipeline import load_tokenizer
from vla.data.stats import ActionNormalizer
from vla.data.transforms import Tokenize
from vla.model import ActionStepper, VLAModel, load_export
from vla.model.export import read_normalization, read_run_config
from vla.train.storage import localize

Observation = dict  # {"images": {camera: HxWx3 uint8}, "instruction": str, ...}


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


class Policy:
    """``reset(env_index=None)``, ``act(obs) -> [7]``, ``act_batch(observations) -> [E, 7]``.

    Actions are in the dataset's units (pose un-normalized with the training statistics),
    gripper -1 (close) or +1 (open). ``act_batch`` keeps one history per environment index.
    """

    def __init__(self, model: VLAModel, normalizer: ActionNormalizer, preprocessor: Preprocessor,
                 device: torch.device):
        self.model = model
        self.normalizer = normalizer
        self.preprocessor = preprocessor
        self.device = device
        self.window_size = model.config.window_size
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
        normalizer = ActionNormalizer.from_dict(read_normalization(export_dir))
        tokenize = Tokenize(load_tokenizer(str(export_dir)), run.data.max_text_len)
        return cls(model, normalizer, Preprocessor(run.data.cameras, model.image_size, tokenize), target)

    def reset(self, env_index: int | None = None) -> None:
        """Forget the history of every environment, or of ``env_index`` only."""
        self.stepper.reset(env_index)

    def act(self, observation: Observation) -> np.ndarray:
        """One environment's action for ``observation``: ``[7]`` float32."""
        return self.act_batch([observation])[0]

    def act_batch(self, observations: list[Observation]) -> np.ndarray:
        """One step of ``E`` environments (observation ``i`` belongs to environment ``i``): ``[E, 7]``."""
        return self.actions_from_output(self.infer(observations))

    @torch.no_grad()
    def infer(self, observations: list[Observation]) -> torch.Tensor:
        """The model's raw output for one step of ``E`` environments: ``[E, 7]`` = normalized pose
        of the first predicted step + gripper logit (``ActionStepper.step``)."""
        images = self.preprocessor.images(observations).to(self.device)
        ids, mask = (t.to(self.device) for t in self.preprocessor.instructions(observations))
        return self.stepper.step(images, ids, mask)

    def actions_from_output(self, output: torch.Tensor) -> np.ndarray:
        """Raw ``[E, 7]`` model output -> actions: pose un-normalized, gripper sigmoid > 0.5 -> +1 else -1."""
        actions = output.float().cpu().numpy().copy()
        actions[:, 6] = np.where(actions[:, 6] > 0, 1.0, -1.0)
        return self.normalizer.unnormalize(actions).astype(np.float32)

    def act_chunk_sessions(self, keys: list[Hashable], observations: list[Observation]) -> np.ndarray:
        """``act_chunk_batch`` where observation ``i`` continues session ``keys[i]``'s history
        (``ActionStepper.sessions``): one forward pass for any subset of sessions. ``[E, N, D]``."""
        with self.stepper.sessions(keys):
            return self.act_chunk_batch(observations)

    def end_session(self, key: Hashable) -> None:
        """Forget session ``key``'s history."""
        self.stepper.end_session(key)
