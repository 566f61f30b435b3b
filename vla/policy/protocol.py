"""What a robot sends and gets back over openpi's websocket protocol, checked field by field.

Observation (one binary msgpack frame, arrays as openpi's msgpack_numpy encodes them)::

    {"images": {camera: HxWx3 uint8}, "prompt" | "instruction": str,
     "state": [S] floats (when the policy uses state), "reset": bool (optional)}

Answer: ``{"actions": [N, D] float32}``, the whole predicted chunk in the robot's units.
Every problem raises ``ObservationError`` whose message starts with the field's name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.policy.policy import Observation, Policy, observed_state

INSTRUCTION_KEYS = ("prompt", "instruction")  # openpi's clients send "prompt"


class ObservationError(ValueError):
    """An observation the server refuses; the message names the field and what was expected."""


def bad(field: str, expected: str, got: Any = None) -> ObservationError:
    shown = "" if got is None else f", got {got!r}"[:200]
    return ObservationError(f"{field}: expected {expected}{shown}")


def described(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype} {value.shape}"
    return type(value).__name__


def check_image(value: Any, field: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB with H, W >= 1."""
    if not isinstance(value, np.ndarray):
        raise bad(field, "an HxWx3 uint8 array (openpi msgpack_numpy)", described(value))
    if value.dtype != np.uint8:
        raise bad(field, "dtype uint8", str(value.dtype))
    if value.ndim != 3 or value.shape[2] != 3:
        hint = " (channels first? send HxWx3)" if value.ndim == 3 and value.shape[0] == 3 else ""
        raise bad(field, f"shape [H, W, 3] (RGB, channels last){hint}", value.shape)
    if value.shape[0] < 1 or value.shape[1] < 1:
        raise bad(field, "H >= 1 and W >= 1", value.shape)
    return value


def check_state(value: Any, state_dim: int) -> np.ndarray:
    """``[state_dim]`` finite floats (the length checked by the policy's own ``observed_state``)."""
    try:
        state = observed_state([{"state": value}], state_dim)[0]
    except (TypeError, ValueError) as err:
        named = str(err).startswith("state:")
        raise ObservationError(str(err)) if named else bad("state", f"{state_dim} floats", described(value)) from None
    if not np.isfinite(state).all():
        raise bad("state", "finite values", state.tolist())
    return state


def instruction_of(message: dict) -> str:
    given = [key for key in INSTRUCTION_KEYS if key in message]
    if len(given) != 1:
        raise bad("prompt", 'the instruction as exactly one of "prompt" or "instruction"', sorted(message))
    value = message[given[0]]
    if not isinstance(value, str) or not value.strip():
        raise bad(given[0], "a non-empty string", value)
    return value


def parse_observation(message: Any, policy: Policy) -> tuple[Observation, bool]:
    """A decoded frame -> (the observation ``policy`` takes, whether it asks for a reset)."""
    if not isinstance(message, dict):
        raise bad("observation", 'a map {"images": ..., "prompt": ...}', described(message))
    cameras = list(policy.cameras)
    images = message.get("images")
    if not isinstance(images, dict) or sorted(images) != sorted(cameras):
        shown = sorted(map(str, images)) if isinstance(images, dict) else described(images)
        raise bad("images", f"a map of exactly the cameras {cameras} to images", shown)
    reset = message.get("reset", False)
    if not isinstance(reset, bool):
        raise bad("reset", "true or false", reset)
    observation = {"images": {camera: check_image(images[camera], f"images.{camera}") for camera in cameras},
                   "instruction": instruction_of(message)}
    if policy.state_dim:
        observation["state"] = check_state(message.get("state"), policy.state_dim)
    return observation, reset


def metadata(policy: Policy) -> dict:
    """The frame a client gets on connect: what to send and what comes back."""
    space = policy.action_space
    return {
        "protocol": "openpi-websocket",
        "cameras": list(policy.cameras),
        "image_size": policy.image_size,
        "image_format": "HxWx3 uint8 RGB, any size (resized by the server)",
        "state_dim": policy.state_dim,
        "action_dim": space.dim,
        "action_names": list(space.names) if space.names else None,
        "binary_grippers": list(space.binary_grippers),
        "chunk_length": policy.chunk_length,
        "instruction_keys": list(INSTRUCTION_KEYS),
        "instruction_max_tokens": policy.preprocessor.tokenize.max_len,
    }
