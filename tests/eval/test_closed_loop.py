"""The done criterion on a small budget: a briefly trained policy succeeds closed-loop far more
often than the random and constant baselines, on the environment its demonstrations came from."""

from __future__ import annotations

import pytest

from benchmarks.plain_closed_loop import DEMO_CONFIG, train_plainly, training_windows
from vla.config import load_config
from vla.data.converters.synthetic import convert_synthetic
from vla.eval.environments import SyntheticEnvironment, evaluation_episodes
from vla.eval.evaluate import EvalOptions, closed_loop
from vla.eval.rollout import ConstantPolicy, RandomPolicy, run_episodes
from vla.model import build_tokenizer
from vla.sim import SimConfig
from vla.train.launch import DEMO_ACTION_NOISE, DEMO_EPISODES


def test_baselines_rarely_succeed():
    env = SyntheticEnvironment(SimConfig())
    episodes = evaluation_episodes(env, 40)
    for policy in (RandomPolicy(0), ConstantPolicy([0.0, 0.0, -0.1, 0.0, 0.0, 0.0, 1.0])):
        assert sum(r.success for r in run_episodes(policy, episodes, env)) <= 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_briefly_trained_policy_beats_random_and_constant_closed_loop(ray_session, export_writer, tmp_path):
    """The demo's config and data (configs/demo.yaml, DEMO_EPISODES noisy scenes) trained in one process."""
    root = str(tmp_path / "synthetic")
    convert_synthetic(root, episodes=DEMO_EPISODES, val_episodes=4, image_size=32, seed=0,
                      action_noise=DEMO_ACTION_NOISE)
    cfg = load_config(str(DEMO_CONFIG), [f"data.path={root}"])
    tokenizer_dir = str(tmp_path / "tokenizer")
    build_tokenizer(cfg.model).save_pretrained(tokenizer_dir)
    model = train_plainly(cfg, training_windows(cfg, tokenizer_dir))
    export = export_writer(tmp_path / "export", model, cfg)

    report, _ = closed_loop(export, cfg, EvalOptions(episodes=100, tasks_per_policy=2, record=0))
    rates = {name: result["success_rate"] for name, result in report["policies"].items()}
    assert rates["trained"] >= 0.20, rates  # measured 0.44 at seed 0, 6000 steps (docs/evaluation.md)
    assert rates["trained"] >= max(rates["random"], rates["constant"]) + 0.05, rates
