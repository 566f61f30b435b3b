"""What a robot's action vector is: its length, the names of its dimensions, which are grippers.

A dataset records its action space in ``metadata.json``; every layer reads it from there (the
statistics, the loss, the heads, acting, evaluation). A gripper dimension is either

- **binary**: the values are -1 (close) or +1 (open); the model predicts a logit trained with
  binary cross-entropy, and acting returns -1 or +1;
- **continuous**: regressed and normalized like every other dimension (e.g. an SO-100's
  ``gripper.pos``, a MetaWorld gripper effort); only its name says it is a gripper.

The default is the seed's 7-DOF arm: 6 pose deltas and a binary gripper at dimension 6.
"""

from __future__ import annotations

from dataclasses import dataclass

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
