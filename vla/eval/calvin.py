"""CALVIN's long-horizon evaluation for a ``Policy`` (optional: needs ``calvin_env`` and ``calvin_agent``).

The protocol (Mees et al., as the CALVIN repository's ``evaluate_policy.py`` runs it): chains
of 5 subtasks from fixed initial states; each subtask gets ``EP_LEN`` = 360 steps, the
policy is reset and told the subtask's first validation annotation, and the task oracle
checks success against the state at the subtask's start; a chain stops at its first
failure. Reported: the success rate of completing 1..5 subtasks in a row and the average
successful length (0-5).

    python -m vla.eval.calvin --export ~/vla_runs/calvin/export --dataset /data/calvin/task_D_D --chains 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vla.data.converters.calvin import CAMERAS

EP_LEN = 360
CHAIN_LENGTH = 5
NUM_CHAINS = 1000


def calvin_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("calvin_env", "calvin_agent"))


def calvin_observation(obs: dict, instruction: str) -> dict:
    """A CALVIN env observation -> the ``Policy`` observation (cameras named as the CALVIN converter names them)."""
    return {"images": {camera: obs["rgb_obs"][key] for camera, key in CAMERAS.items()}, "instruction": instruction}


def run_subtask(env: Any, policy: Any, oracle: Any, subtask: str, instruction: str, ep_len: int = EP_LEN) -> bool:
    """One subtask from the env's current state: reset the policy, act until the oracle sees it done."""
    obs = env.get_obs()
    policy.reset()
    start_info = env.get_info()
    for _ in range(ep_len):
        action = policy.act(calvin_observation(obs, instruction))
        obs, _, _, info = env.step(action)
        if oracle.get_task_info_for_set(start_info, info, {subtask}):
            return True
    return False


def run_chain(env: Any, policy: Any, oracle: Any, reset_env: Callable[[], None], chain: Sequence[str],
              annotations: dict[str, list[str]], ep_len: int = EP_LEN) -> int:
    """Subtasks completed in a row (0..len(chain)); the chain stops at its first failure."""
    reset_env()
    for done, subtask in enumerate(chain):
        if not run_subtask(env, policy, oracle, subtask, annotations[subtask][0], ep_len):
            return done
    return len(chain)


def summarize_chains(lengths: Sequence[int], chain_length: int = CHAIN_LENGTH) -> dict:
    """CALVIN's figures: success of 1..chain_length subtasks in a row and the average successful length."""
    lengths = np.asarray(lengths)
    return {
        "chains": len(lengths),
        "success_rates": [float((lengths >= k).mean()) if len(lengths) else 0.0 for k in range(1, chain_length + 1)],
        "average_length": float(lengths.mean()) if len(lengths) else 0.0,
    }


def evaluate_calvin(policy: Any, dataset_path: str, chains: int = NUM_CHAINS, ep_len: int = EP_LEN) -> dict:
    """The long-horizon protocol on CALVIN's validation scenes of ``dataset_path`` (e.g. task_D_D)."""
    if not calvin_available():
        raise RuntimeError("CALVIN evaluation needs calvin_env and calvin_agent (github.com/mees/calvin)")
    import hydra
    from calvin_agent.evaluation.multistep_sequences import get_sequences
    from calvin_agent.evaluation.utils import get_env, get_env_state_for_initial_condition
    from omegaconf import OmegaConf

    conf = Path(importlib.util.find_spec("calvin_agent").origin).parents[1] / "conf"
    oracle = hydra.utils.instantiate(OmegaConf.load(conf / "callbacks/rollout/tasks/new_playtable_tasks.yaml"))
    annotations = OmegaConf.to_container(OmegaConf.load(conf / "annotations/new_playtable_validation.yaml"))
    env = get_env(Path(dataset_path) / "validation", show_gui=False)
    lengths = []
    for initial_state, chain in get_sequences(chains):
        robot_obs, scene_obs = get_env_state_for_initial_condition(initial_state)
        lengths.append(run_chain(env, policy, oracle, lambda: env.reset(robot_obs=robot_obs, scene_obs=scene_obs),
                                 chain, annotations, ep_len))
    return summarize_chains(lengths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CALVIN long-horizon evaluation of a policy export")
    parser.add_argument("--export", required=True, help="policy export folder")
    parser.add_argument("--dataset", required=True, help="CALVIN dataset folder holding validation/")
    parser.add_argument("--chains", type=int, default=NUM_CHAINS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not calvin_available():
        print("CALVIN is not installed (pip install calvin_env calvin_agent from github.com/mees/calvin); "
              "nothing evaluated", file=sys.stderr)
        return 2
    from vla.policy import Policy

    result = evaluate_calvin(Policy.load(args.export, args.device), args.dataset, args.chains)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
