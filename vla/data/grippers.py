"""Declaring which action dimensions of a source dataset are grippers, and mapping them to -1/+1.

A declaration is ``INDEX:CONVENTION`` (``prepare_data.py lerobot --gripper 5:open_fraction``,
``data.lerobot_grippers``). A binary convention (``GRIPPER_CONVENTIONS``) says how the source
encodes open and closed; the dimension is then mapped to -1 (close) / +1 (open) and trained with
binary cross-entropy. ``continuous`` only names the dimension a gripper: it is regressed like the
others (an SO-100's ``gripper.pos``). Undeclared dimensions are never grippers.
"""

from __future__ import annotations

import numpy as np

from vla.action_space import ActionSpace

CONTINUOUS = "continuous"
GRIPPER_CONVENTIONS = {
    "signed": "negative closes, positive opens (our -1 / +1 as is), 0 is an error",
    "signed_inverted": "positive closes, negative opens, 0 is an error",
    "open_fraction": "in [0, 1] with 1 fully open, >= 0.5 opens",
    "close_fraction": "in [0, 1] with 1 fully closed, >= 0.5 closes",
}


class GripperError(ValueError):
    """A gripper declaration is malformed or does not fit the action."""


def parse_gripper(entry: str) -> tuple[int, str]:
    """``"5:open_fraction"`` -> ``(5, "open_fraction")``."""
    index, sep, convention = str(entry).partition(":")
    kinds = [*GRIPPER_CONVENTIONS, CONTINUOUS]
    if not sep or not index.strip().isdigit() or convention not in kinds:
        raise GripperError(f"gripper {entry!r} is not INDEX:CONVENTION with CONVENTION one of {kinds}")
    return int(index), convention


def declared_grippers(entries: list[str], action_dim: int) -> dict[int, str]:
    """``{index: convention}`` of the declarations, each index checked against ``action_dim``."""
    grippers: dict[int, str] = {}
    for entry in entries:
        index, convention = parse_gripper(entry)
        if index >= action_dim:
            raise GripperError(f"gripper {entry!r}: dimension {index} is out of range (the action has "
                               f"{action_dim} values, 0..{action_dim - 1})")
        if index in grippers:
            raise GripperError(f"gripper {entry!r}: dimension {index} is declared twice")
        grippers[index] = convention
    return grippers


def action_space_of(action_dim: int, names: list[str] | None, grippers: dict[int, str]) -> ActionSpace:
    """The action space of a source whose ``grippers`` were declared (``declared_grippers``)."""
    return ActionSpace(
        dim=action_dim,
        names=tuple(names) if names and len(names) == action_dim else None,
        binary_grippers=tuple(sorted(i for i, c in grippers.items() if c != CONTINUOUS)),
        continuous_grippers=tuple(sorted(i for i, c in grippers.items() if c == CONTINUOUS)),
    )


def map_grippers(actions: np.ndarray, grippers: dict[int, str]) -> np.ndarray:
    """``actions [S, D]`` with every binary gripper dimension mapped to -1 / +1 (in place, returned);
    raises ``GripperError`` naming the dimension when a value does not fit its convention."""
    for index, convention in grippers.items():
        if convention != CONTINUOUS:
            try:
                actions[:, index] = gripper_to_pm1(actions[:, index], convention)
            except ValueError as err:
                raise GripperError(f"dimension {index}: {err}") from None
    return actions


def gripper_to_pm1(values: np.ndarray, convention: str) -> np.ndarray:
    """Gripper values in ``convention`` (``GRIPPER_CONVENTIONS``) -> -1 close / +1 open."""
    if convention in ("signed", "signed_inverted"):
        bad = ~np.isfinite(values) | (values == 0)
        is_open = values > 0
    else:
        bad = ~((values >= 0) & (values <= 1))
        is_open = values >= 0.5
    if bad.any():
        raise ValueError(f"value {values[bad][0]} does not fit the {convention!r} convention "
                         f"({GRIPPER_CONVENTIONS[convention]})")
    if convention in ("signed_inverted", "close_fraction"):
        is_open = ~is_open
    return np.where(is_open, 1.0, -1.0).astype(np.float32)
