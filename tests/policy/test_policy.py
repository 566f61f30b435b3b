"""The Policy API: preprocessing as in training, history as in training windows, actions in dataset units."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vla.data import load_metadata
from vla.data.transforms import DecodeImages, Tokenize
from vla.model.heads import join_actions
from vla.policy import Policy
from vla.sim import SimConfig, SyntheticEnv

STEPS = 6


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def expert_rollout(seed: int, steps: int, image_size: int = 32) -> list[dict]:
    env = SyntheticEnv(SimConfig(image_size=image_size))
    observations = [env.reset(seed)]
    for _ in range(steps - 1):
        observations.append(env.step(env.expert_action())[0])
    return observations


def training_inputs(policy: Policy, observations: list[dict]) -> dict[str, torch.Tensor]:
    """The frames and tokens of an episode as the training pipeline builds them (PNG -> decode -> tokenize)."""
    cameras, tokenize = policy.preprocessor.cameras, policy.preprocessor.tokenize
    row = {f"image_{c}": [png(obs["images"][c]) for obs in observations] for c in cameras}
    row = DecodeImages(cameras, policy.preprocessor.image_size)({**row, "episode_id": 0})
    row = Tokenize(tokenize.tokenizer, tokenize.max_len)({**row, "instruction": observations[0]["instruction"]})
    return {"images": torch.from_numpy(row["images"]), "input_ids": torch.from_numpy(row["input_ids"])[None],
            "attention_mask": torch.from_numpy(row["attention_mask"])[None]}


def batched_model_output(policy: Policy, inputs: dict[str, torch.Tensor], t: int) -> torch.Tensor:
    """The chunk ``[N, D]`` of the model on the training window that ends at frame ``t`` (shorter at
    the episode start)."""
    start = max(0, t - policy.window_size + 1)
    state = inputs["state"][start:t + 1][None] if "state" in inputs else None
    with torch.no_grad():
        out = policy.model(inputs["images"][start:t + 1][None], inputs["input_ids"], inputs["attention_mask"], state)
    return join_actions(out, policy.model.config)[0, -1]


def test_preprocessing_is_the_training_pipelines(tiny_export):
    policy = Policy.load(tiny_export)
    observations = expert_rollout(seed=3, steps=2, image_size=48)  # resized to the model's 32 px
    inputs = training_inputs(policy, observations)
    assert torch.equal(policy.preprocessor.images(observations), inputs["images"])
    ids, mask = policy.preprocessor.instructions(observations[:1])
    assert torch.equal(ids, inputs["input_ids"]) and torch.equal(mask, inputs["attention_mask"])


def test_step_api_on_a_rollout_matches_the_batched_model(tiny_export):
    policy = Policy.load(tiny_export)
    assert policy.window_size == 3
    episodes = [expert_rollout(seed, STEPS) for seed in (0, 1)]
    inputs = [training_inputs(policy, episode) for episode in episodes]
    policy.reset()
    for t in range(STEPS):
        stepped = policy.infer([episode[t] for episode in episodes])
        for e in range(2):
            torch.testing.assert_close(stepped[e], batched_model_output(policy, inputs[e], t), rtol=1e-4, atol=1e-5)

    # Resetting one environment restarts only its history.
    policy.reset()
    for t in range(3):
        policy.infer([episodes[0][t], episodes[1][t]])
    policy.reset(env_index=1)
    stepped = policy.infer([episodes[0][3], episodes[1][0]])
    torch.testing.assert_close(stepped[0], batched_model_output(policy, inputs[0], 3), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stepped[1], batched_model_output(policy, inputs[1], 0), rtol=1e-4, atol=1e-5)

    # act() is act_batch() of one environment; the environment count changes only after reset().
    policy.reset()
    assert policy.act(episodes[0][0]).shape == (7,)
    assert policy.act_chunk_batch([episodes[0][1]]).shape == (1, policy.chunk_length, 7)
    with pytest.raises(ValueError, match="reset"):
        policy.act_batch([episodes[0][1], episodes[1][1]])


def test_actions_are_unnormalized_to_the_datasets_scale(tiny_export, synthetic_root):
    policy = Policy.load(tiny_export)
    assert policy.normalization.action.mode == "quantile"
    stats = load_metadata(synthetic_root).splits["train"].action_stats
    low, high = np.asarray(stats.q01[:6]), np.asarray(stats.q99[:6])
    observations = expert_rollout(seed=5, steps=4)
    policy.reset()
    actions = np.stack([policy.act(obs) for obs in observations])
    policy.reset()
    raw = torch.stack([policy.infer([obs])[0, 0] for obs in observations]).numpy()

    assert actions.shape == (4, 7) and actions.dtype == np.float32
    # The head's tanh output in [-1, 1] maps onto the training split's q01..q99 box (constant dims keep scale 1).
    moving = high > low
    assert moving[:3].all()
    scale, offset = np.where(moving, (high - low) / 2, 1.0), (high + low) / 2
    np.testing.assert_allclose(actions[:, :6], raw[:, :6] * scale + offset, rtol=1e-5, atol=1e-6)
    assert np.all(actions[:, :6][:, moving] >= low[moving] - 1e-6)
    assert np.all(actions[:, :6][:, moving] <= high[moving] + 1e-6)
    np.testing.assert_array_equal(actions[:, 6], np.where(raw[:, 6] > 0, 1.0, -1.0))


def test_bf16_policy_acts_close_to_fp32(tiny_export):
    observations = expert_rollout(seed=2, steps=3)
    full, half = Policy.load(tiny_export), Policy.load(tiny_export, dtype=torch.bfloat16)
    assert next(half.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(half.model.head.parameters()).dtype == torch.float32
    for obs in observations:
        torch.testing.assert_close(half.infer([obs]), full.infer([obs]), rtol=0.0, atol=0.1)


def test_a_policy_trained_with_state_reads_it_normalized_and_refuses_a_bad_one(state_export):
    policy = Policy.load(state_export)
    assert policy.state_dim == 4
    observations = expert_rollout(seed=4, steps=4)
    inputs = training_inputs(policy, observations)
    states = np.stack([obs["state"] for obs in observations])
    inputs["state"] = torch.from_numpy(policy.normalization.state.normalize(states))
    policy.reset()
    for t, obs in enumerate(observations):
        torch.testing.assert_close(policy.infer([obs])[0], batched_model_output(policy, inputs, t), rtol=1e-4, atol=1e-5)
    policy.reset()
    with pytest.raises(ValueError, match="^state: missing; this policy reads the robot state, 4 floats$"):
        policy.act({**observations[0], "state": None})
    with pytest.raises(ValueError, match="^state: 3 values, expected 4$"):
        policy.act({**observations[0], "state": [0.0, 0.0, 0.0]})
