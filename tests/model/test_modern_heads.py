"""The flow-matching head (pi0) and the parallel L1 chunk head (OpenVLA-OFT): training reaches every
parameter on any action space, the flow loss is pi0's formula, its sampler is seeded, exports act,
and FSDP2 over 2 gloo ranks computes the flow head's unsharded gradients."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vla.config import load_config
from vla.data import load_metadata
from vla.data.stats import Normalization
from vla.model import ModelConfig, build_model, save_export
from vla.model.heads import ActionOutput, FlowHead, FlowTraining
from vla.model.loss import action_loss
from vla.policy import Policy
from vla.sim import SimConfig, SyntheticEnv
from vla.train.config import TrainConfig
from vla.train.parallelize import parallelize
from vla.typed_config import ConfigError

HEADS = {"flow": {}, "l1_chunk": {"latent_num": 2}}  # fwd_pred_next_n is 2 in the tiny config
SPACES = {
    "arm": {},
    "two-grippers-state": {"action_dim": 9, "binary_grippers": [3, 8], "state_dim": 4},
    "no-gripper": {"action_dim": 2, "binary_grippers": []},
}


def train_batch(model, make_batch):
    batch = make_batch(model.config)
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    shape = (*batch["actions"].shape[:3], cfg.action_dim)
    actions = torch.rand(shape, generator=g) * 2 - 1
    actions[..., cfg.binary_grippers] = actions[..., cfg.binary_grippers].sign()
    batch["actions"] = actions
    if cfg.state_dim:
        batch["state"] = torch.randn(*shape[:2], cfg.state_dim, generator=g)
    return batch


@pytest.mark.parametrize("space", SPACES.values(), ids=SPACES.keys())
@pytest.mark.parametrize("head", HEADS)
def test_training_reaches_every_parameter_on_any_action_space(make_model, make_batch, head, space):
    model = make_model(head=head, **HEADS[head], **space)
    batch = train_batch(model, make_batch)
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch.get("state"), batch["actions"])
    assert isinstance(output, FlowTraining if head == "flow" else ActionOutput)
    metrics = model.loss(output, batch["actions"], batch["action_mask"])
    metrics["loss"].backward()
    assert torch.isfinite(metrics["loss"])
    assert ("gripper_accuracy" in metrics) == bool(model.config.binary_grippers)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.eval()  # evaluating: the flow head generates the chunk, scored like every other head's
    with torch.no_grad():
        acted = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch.get("state"), batch["actions"])
    assert isinstance(acted, ActionOutput)
    grippers = len(model.config.binary_grippers)
    assert acted.continuous.shape == (3, 3, 2, model.config.action_dim - grippers)
    assert acted.gripper_logits.shape == (3, 3, 2, grippers) and acted.continuous.abs().max() <= 1
    assert "pose_error" in model.loss(acted, batch["actions"], batch["action_mask"])


def test_l1_chunk_loss_is_the_mean_absolute_error(make_model, make_batch):
    model = make_model(head="l1_chunk", latent_num=2, lambda_gripper=0.0)
    batch = train_batch(model, make_batch)
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"])
    error = (output.continuous - batch["actions"][..., :6]).abs()
    expected = (error * batch["action_mask"].unsqueeze(-1)).sum() / (batch["action_mask"].sum() * 6)
    torch.testing.assert_close(model.loss(output, batch["actions"], batch["action_mask"])["loss"], expected)


def test_l1_chunk_needs_one_query_token_per_chunk_step():
    with pytest.raises(ConfigError, match="latent_num: head l1_chunk reads one action query token per chunk step: "
                                          r"set latent_num = fwd_pred_next_n \(4\), got 1"):
        load_config(None, ["model.head=l1_chunk", "model.fwd_pred_next_n=4"])


def flow_head(**options) -> FlowHead:
    cfg = ModelConfig(head="flow", fwd_pred_next_n=3, head_hidden_size=16, head_num_layers=1, **options)
    torch.manual_seed(0)
    return FlowHead(cfg, feature_size=8)


def test_flow_loss_on_a_hand_built_batch_is_pi0s_formula():
    """tau and eps fixed by hand: loss_arm = mean over unmasked steps of |v(tau*eps + (1-tau)*a, tau) - (eps - a)|^2."""
    head = flow_head(binary_grippers=[6])
    features = torch.randn(2, 2, 1, 8)
    actions = torch.rand(2, 2, 3, 7) * 2 - 1
    actions[..., 6] = 1.0
    mask = torch.ones(2, 2, 3)
    mask[1, 1, 2] = 0.0
    tau = torch.tensor([0.1, 0.5, 0.9, 1.0]).reshape(2, 2, 1, 1)
    eps = torch.randn(2, 2, 3, 6)
    head.draw_time_and_noise = lambda like: (tau, eps)
    output = head(features, None, actions)
    a = actions[..., :6]
    h = head.trunk(head.inputs(features, None))
    velocity = head.velocity(tau * eps + (1 - tau) * a, tau, h)
    squared = ((velocity - (eps - a)) ** 2).sum(-1)  # over the 6 continuous dims
    expected = (squared * mask).sum() / (mask.sum() * 6)
    terms = action_loss(output, actions, mask, lambda_gripper=0.0, binary_grippers=[6])
    torch.testing.assert_close(terms["loss_arm"], expected)
    # With a velocity of 0 (last layer zeroed) the loss is the mean of |eps - a|^2: no network in it.
    torch.nn.init.zeros_(head.arm[-1].weight)
    torch.nn.init.zeros_(head.arm[-1].bias)
    terms = action_loss(head(features, None, actions), actions, mask, lambda_gripper=0.0, binary_grippers=[6])
    torch.testing.assert_close(terms["loss_arm"], (((eps - a) ** 2).sum(-1) * mask).sum() / (mask.sum() * 6))


def test_flow_time_is_beta_1_5_1():
    head = flow_head()
    torch.manual_seed(0)
    tau, eps = head.draw_time_and_noise(torch.zeros(4000, 1, 3, 6))
    assert tau.shape == (4000, 1, 1, 1) and eps.shape == (4000, 1, 3, 6)
    assert abs(tau.mean().item() - 0.6) < 0.02  # Beta(1.5, 1) has mean 1.5 / 2.5
    assert abs((tau < 0.5).float().mean().item() - 0.5**1.5) < 0.03  # its CDF is tau^1.5


def test_flow_sampler_is_deterministic_under_its_seed_and_takes_flow_steps_euler_steps():
    head = flow_head(flow_steps=4).eval()
    features = torch.randn(2, 2, 1, 8)
    calls = []
    head.arm.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(123)
    first = head(features).continuous
    torch.manual_seed(456)  # the global RNG does not matter
    assert torch.equal(head(features).continuous, first)
    assert len(calls) == 2 * 4
    # One row alone acts as it does in a batch (the noise does not depend on the batch).
    torch.testing.assert_close(head(features[1:]).continuous, first[1:])
    other = flow_head(flow_steps=4, flow_seed=1).eval()
    other.load_state_dict(head.state_dict())
    assert not torch.allclose(other(features).continuous, first)
    # The Euler steps follow the velocity from tau = 1 (noise) to 0.
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0)).expand(2, 2, 3, 6)
    h = head.trunk(head.inputs(features, None))
    for k in range(4):
        x = x - 0.25 * head.velocity(x, torch.full((2, 2, 1, 1), 1 - k * 0.25), h)
    torch.testing.assert_close(first, x.clamp(-1, 1))


@pytest.mark.parametrize("head", HEADS)
def test_export_then_policy_acts(synthetic_root, tmp_path, head):
    overrides = [f"data.path={synthetic_root}", f"model.head={head}", "model.window_size=2", "model.fwd_pred_next_n=2",
                 "model.head_hidden_size=32", "model.head_num_layers=1", "model.tiny_hidden_size=32",
                 "data.max_text_len=16"] + [f"model.{k}={v}" for k, v in HEADS[head].items()]
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    normalization = Normalization.from_metadata(load_metadata(synthetic_root), cfg.data, use_state=False)
    save_export(tmp_path, model, run_config=cfg.to_dict(), normalization=normalization.to_dict())
    policy = Policy.load(str(tmp_path))
    env = SyntheticEnv(SimConfig(image_size=32))
    observations = [env.reset(0)]
    observations.append(env.step(env.expert_action())[0])
    policy.reset()
    actions = np.stack([policy.act(obs) for obs in observations])
    assert actions.shape == (2, 7) and np.isfinite(actions).all() and set(np.unique(actions[:, 6])) <= {-1.0, 1.0}
    policy.reset()
    chunks = policy.act_chunk_batch(observations[:1] * 2)
    assert chunks.shape == (2, 2, 7)
    np.testing.assert_allclose(chunks[0], chunks[1])
    np.testing.assert_allclose(chunks[0, 0], actions[0], rtol=1e-5, atol=1e-6)


# --- FSDP2 ----------------------------------------------------------------------------------

WORLD = 2
FSDP_CONFIG = ModelConfig(head="flow", tiny_hidden_size=32, tiny_num_layers=1, image_size=16, window_size=2,
                          fwd_pred_next_n=2, head_hidden_size=32, head_num_layers=1, num_views=1)


def fsdp_batch(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    actions = torch.rand(2, 2, 2, 7, generator=g) * 2 - 1
    actions[..., 6] = actions[..., 6].sign()
    ids = torch.randint(3, 100, (2, 8), generator=g)
    return {"images": torch.randint(0, 256, (2, 2, 1, 3, 16, 16), dtype=torch.uint8, generator=g),
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "actions": actions,
            "action_mask": torch.ones(2, 2, 2)}


def flow_loss(model, batch: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same tau and eps in the sharded and the plain model
    output = model(batch["images"], batch["input_ids"], batch["attention_mask"], None, batch["actions"])
    return model.loss(output, batch["actions"], batch["action_mask"])["loss"]


def check_flow_gradients(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        reference = build_model(FSDP_CONFIG)
        for r in range(WORLD):  # FSDP averages the ranks' gradients
            (flow_loss(reference, fsdp_batch(r), seed=10 + r) / WORLD).backward()
        torch.manual_seed(0)
        model = build_model(FSDP_CONFIG)
        parallelize(model, TrainConfig(num_workers=WORLD), torch.device("cpu"), WORLD)
        flow_loss(model, fsdp_batch(rank), seed=10 + rank).backward()
        expected = dict(reference.named_parameters())
        checked = 0
        for name, param in model.named_parameters():
            if expected[name].grad is None:
                assert param.grad is None, name
                continue
            torch.testing.assert_close(param.grad.full_tensor(), expected[name].grad, rtol=1e-4, atol=1e-6, msg=name)
            checked += name.startswith("head.")
        assert checked == sum(1 for _ in model.head.parameters())
    finally:
        dist.destroy_process_group()


def test_flow_head_gradients_under_fsdp2_equal_the_unsharded_ones():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(check_flow_gradients, args=(port,), nprocs=WORLD, join=True)
