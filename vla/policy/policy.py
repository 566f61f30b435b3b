"""A trained policy loaded from an export folder: observations in, robot actions out.

    policy = Policy.load("~/vla_runs/demo/export")          # device="cuda" runs in bf16
    policy.reset()
    action = policy.act({"images": {"static": rgb, "wrist": rgb}, "instruction": "pick up the red block"})

The same object serves evaluation and deployment (openpi style); no Ray, no FSDP.
Preprocessing reuses the training pipeline's own functions (image resize, tokenization), and
the history follows RoboVLMs inference: the last ``window_size`` frames' action-token
features, the head re-run from a zero state over them, the first predicted step executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from vla.config import Config, resolve_config
from vla.data.episodes import resize_image
from vla.data.pipeline import load_tokenizer
from vla.data.stats import ActionNormalizer
from vla.data.transforms import Tokenize
from vla.model import VLAModel, load_export
from vla.model.export import NORMALIZATION_FILE, RUN_CONFIG_FILE
from vla.train.storage import localize

Observation = dict  # {"images": {camera: HxWx3 uint8}, "instruction": str, ...}


def load_run_config(export_dir: str | Path) -> Config:
    """The full resolved run config saved with an export (cameras, instruction length, data path)."""
    return resolve_config(yaml.safe_load((Path(export_dir) / RUN_CONFIG_FILE).read_text()))


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
        self._history: list[list[torch.Tensor]] = []  # per environment: features [latent, hidden]

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> Policy:
        """The policy of an export folder; ``dtype`` defaults to bf16 on GPU and fp32 on CPU.

        The backbone runs in ``dtype``; the head stays in fp32 (as in training).
        """
        export_dir = Path(localize(str(export_dir)))  # an s3:// export is cached locally
        run = load_run_config(export_dir)
        model, model_cfg = load_export(export_dir)
        target = torch.device(device)
        dtype = dtype or (torch.bfloat16 if target.type == "cuda" else torch.float32)
        model.to(device=target, dtype=dtype)
        model.head.float()
        normalizer = ActionNormalizer.from_dict(json.loads((export_dir / NORMALIZATION_FILE).read_text()))
        tokenize = Tokenize(load_tokenizer(str(export_dir)), run.data.max_text_len)
        return cls(model.eval(), normalizer, Preprocessor(run.data.cameras, model_cfg.image_size, tokenize), target)

    def reset(self, env_index: int | None = None) -> None:
        """Forget the history of every environment, or of ``env_index`` only."""
        if env_index is None:
            self._history = []
        elif env_index < len(self._history):
            self._history[env_index] = []

    def act(self, observation: Observation) -> np.ndarray:
        """One environment's action for ``observation``: ``[7]`` float32."""
        return self.act_batch([observation])[0]

    def act_batch(self, observations: list[Observation]) -> np.ndarray:
        """One step of ``E`` environments (observation ``i`` belongs to environment ``i``): ``[E, 7]``."""
        return self.actions_from_output(self.infer(observations))

    @torch.no_grad()
    def infer(self, observations: list[Observation]) -> torch.Tensor:
        """The model's raw output for one step of ``E`` environments: ``[E, 7]`` = normalized pose
        of the first predicted step + gripper logit (what ``ActionStepper.step`` returns)."""
        count = len(observations)
        if not self._history:
            self._history = [[] for _ in range(count)]
        if count != len(self._history):
            raise ValueError(f"act_batch got {count} observations for {len(self._history)} environments; "
                             "call reset() to change the number of environments")
        images = self.preprocessor.images(observations).to(self.device)
        ids, mask = (t.to(self.device) for t in self.preprocessor.instructions(observations))
        features = self.model.action_features(images.unsqueeze(1), ids, mask)[:, 0].float()  # [E, latent, H]
        for history, frame in zip(self._history, features):
            history.append(frame)
            del history[:-self.window_size]
        out = torch.empty(count, 7, device=self.device)
        for length in {len(h) for h in self._history}:  # one head call per history length
            envs = [i for i, h in enumerate(self._history) if len(h) == length]
            head = self.model.head(torch.stack([torch.stack(self._history[i]) for i in envs]))
            out[envs] = torch.cat([head.pose[:, -1, 0], head.gripper_logits[:, -1, :1]], dim=-1)
        return out

    def actions_from_output(self, output: torch.Tensor) -> np.ndarray:
        """Raw ``[E, 7]`` model output -> actions: pose un-normalized, gripper sigmoid > 0.5 -> +1 else -1."""
        actions = output.float().cpu().numpy().copy()
        actions[:, 6] = np.where(actions[:, 6] > 0, 1.0, -1.0)
        return self.normalizer.unnormalize(actions).astype(np.float32)
