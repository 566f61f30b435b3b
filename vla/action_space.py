"""What a robot's action vector is: its length, the names of its dimensions, which are grippers.

A dataset records its action space in ``metadata.json``; every layer reads it from there (the
statistics, the loss, the heads, acting, evaluation). A gripper dimension is either

- **binary**: the values are -1 (close) or +1 (open); the model predicts a logit trained with
  binary cross-entropy, and acting returns -1 or +1;
- **continuous**: regressed and normalized like every other dimension (e.g. an SO-100's
  ``gripper.pos``, a MetaWorld gripper effort); only its name says it is a gripper.

The default is the seed's 7-DOF arm: 6 pose deltas and a binary gripper at dimension 6.

Which dimensions of a source dataset (a LeRobot folder) are grippers is declared, never guessed:
a declaration is ``INDEX:CONVENTION`` (``prepare_data.py lerobot --gripper 5:open_fraction``,
``data.lerobot_grippers``). A binary convention (``GRIPPER_CONVENTIONS``) says how the source
encodes open and closed; the dimension is then mapped to -1 (close) / +1 (open) and trained with
binary cross-entropy. ``continuous`` only names the dimension a gripper: it is regressed like the
others (an SO-100's ``gripper.pos``). Undeclared dimensions are never grippers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRIPPER_KINDS = ("binary", "continuous")


@dataclass(frozen=True)
class ActionSpace:
    dim: int = 7
    names: tuple[str, ...] | None = None
    binary_grippers: tuple[int, ...] = (6,)
    continuous_grippers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.dim}")
        if self.names is not None and len(self.names) != self.dim:
            raise ValueError(f"action_names: {len(self.names)} names for {self.dim} dimensions")
        grippers = [*self.binary_grippers, *self.continuous_grippers]
        for index in grippers:
            if not 0 <= index < self.dim:
                raise ValueError(f"grippers: dimension {index} is out of range for action_dim {self.dim}")
        if len(set(grippers)) != len(grippers):
            raise ValueError(f"grippers: a dimension is declared twice ({sorted(grippers)})")

    @property
    def continuous(self) -> tuple[int, ...]:
        """The regressed dimensions (every one that is not a binary gripper), in order."""
        return tuple(i for i in range(self.dim) if i not in self.binary_grippers)

    def to_dict(self) -> dict:
        """The ``metadata.json`` fields: ``action_dim``, ``action_names``, ``grippers``."""
        grippers = sorted([(i, "binary") for i in self.binary_grippers]
                          + [(i, "continuous") for i in self.continuous_grippers])
        return {"action_dim": self.dim, "action_names": list(self.names) if self.names else None,
                "grippers": [{"index": i, "kind": kind} for i, kind in grippers]}

    @classmethod
    def from_dict(cls, data: dict) -> ActionSpace:
        """Read ``to_dict``'s fields; metadata written before action spaces (no ``grippers``) is the 7-DOF arm."""
        if "grippers" not in data:
            return cls(dim=int(data.get("action_dim", 7)))
        kinds: dict[str, list[int]] = {kind: [] for kind in GRIPPER_KINDS}
        for gripper in data["grippers"]:
            if gripper["kind"] not in kinds:
                raise ValueError(f"grippers: kind {gripper['kind']!r} is not one of {GRIPPER_KINDS}")
            kinds[gripper["kind"]].append(int(gripper["index"]))
        names = data.get("action_names")
        return cls(dim=int(data["action_dim"]), names=tuple(names) if names else None,
                   binary_grippers=tuple(kinds["binary"]), continuous_grippers=tuple(kinds["continuous"]))

    def describe(self) -> str:
        """One line for logs: ``6 dims (shoulder_pan.pos, ...), no binary gripper``."""
        names = f" ({', '.join(self.names)})" if self.names else ""
        binary = ", ".join(map(str, self.binary_grippers)) or "none"
        return f"{self.dim} dims{names}, binary grippers: {binary}"


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
