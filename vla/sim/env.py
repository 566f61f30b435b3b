"""The synthetic pick-up task: a table seen from above, coloured blocks, a gripper.

One code path renders, steps and scores the scene, so the demonstrations written by the
``synthetic`` converter and the closed-loop evaluation see exactly the same world.

Coordinates: the table is the unit square, ``x`` to the right (image columns), ``y`` down
(image rows); the gripper has a height ``z`` in [0, 1] and is open or closed.
Action (7-DOF, each in [-1, 1]): ``(dx, dy, dz, droll, dpitch, dyaw, gripper)``; ``dx, dy``
move by at most ``move_step``, ``dz`` by at most ``z_step``; rotations are ignored;
gripper -1 closes and +1 opens (the RoboVLMs convention).

``show_gripper: false`` is the hidden-state variant: neither camera shows the gripper (the wrist
camera shows the static view), so where the gripper is, and so which way to move, is only in the
robot state ``(x, y, z, gripper)``: a policy that does not read the state cannot solve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla.typed_config import check

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
TABLE_RGB = np.array((110, 85, 60), np.uint8)
OUTSIDE_RGB = np.array((0, 0, 0), np.uint8)
GRIPPER_RGB = np.array((255, 255, 255), np.uint8)

# How an episode ended (``SyntheticEnv.outcome``), the failures told apart by what was grasped.
OUTCOMES = ("success", "picked another block", "grasped the target, not lifted", "grasped nothing")


@dataclass
class SimConfig:
    image_size: int = 32  # both cameras render square images of this many pixels
    min_blocks: int = 2
    max_blocks: int = 3
    block_half_size: float = 0.07
    move_step: float = 0.05  # table units per step at |dx| = 1
    z_step: float = 0.2  # height units per step at |dz| = 1
    lift_height: float = 0.6  # success: the target block held at least this high
    grasp_height: float = 0.05  # the gripper closes on a block only this low
    max_steps: int = 40
    align_tolerance: float = 0.035  # the expert lowers once this close to the target (x and y)
    wrist_view: float = 0.2  # half-width of the wrist camera's view at height 0 (grows with z)
    show_gripper: bool = True  # false: the hidden-state variant (module docstring)

    def validate(self) -> None:
        check(self.image_size >= 8, "image_size", "must be >= 8 pixels")
        check(2 <= self.min_blocks <= self.max_blocks <= len(COLOURS), "max_blocks",
              f"need 2 <= min_blocks <= max_blocks <= {len(COLOURS)}")
        check(0 < self.block_half_size < 0.2, "block_half_size", "must be in (0, 0.2)")
        check(self.move_step > 0 and self.z_step > 0, "move_step", "steps must be > 0")
        check(self.max_steps >= 1, "max_steps", "must be >= 1")


@dataclass
class Block:
    colour: str
    x: float
    y: float
    z: float = 0.0


class SyntheticEnv:
    """``reset(seed) -> obs``, ``step(action) -> (obs, success, done)``, ``outcome()``, ``expert_action()``."""

    def __init__(self, cfg: SimConfig | None = None):
        self.cfg = cfg or SimConfig()
        self.cfg.validate()
        self.blocks: list[Block] = []
        self.target = 0
        self.gripper = np.zeros(3)  # x, y, z
        self.closed = False
        self.held: int | None = None
        self.grasped: set[int] = set()  # every block grasped in this episode
        self.steps = 0

    # --- episode --------------------------------------------------------------------------
    def reset(self, seed: int) -> dict:
        """A new scene drawn from ``seed`` (same seed, same scene); returns the observation."""
        cfg, rng = self.cfg, np.random.default_rng(seed)
        n = int(rng.integers(cfg.min_blocks, cfg.max_blocks + 1))
        colours = rng.choice(sorted(COLOURS), size=n, replace=False)
        margin, gap = cfg.block_half_size + 0.03, 3 * cfg.block_half_size
        places: list[np.ndarray] = []
        while len(places) < n:  # rejection sampling: blocks never overlap
            p = rng.uniform(margin, 1 - margin, size=2)
            if all(np.abs(p - q).max() > gap for q in places):
                places.append(p)
        self.blocks = [Block(str(c), float(p[0]), float(p[1])) for c, p in zip(colours, places)]
        self.target = int(rng.integers(n))
        self.gripper = np.array([*rng.uniform(0.1, 0.9, size=2), 1.0])
        self.closed, self.held, self.steps, self.grasped = False, None, 0, set()
        return self.observation()

    @property
    def instruction(self) -> str:
        return f"pick up the {self.blocks[self.target].colour} block"

    def success(self) -> bool:
        return self.held == self.target and self.gripper[2] >= self.cfg.lift_height - 1e-6

    def outcome(self) -> str:
        """One of ``OUTCOMES``: success, else whether another block, the target or nothing was grasped."""
        if self.success():
            return OUTCOMES[0]
        if self.grasped - {self.target}:
            return OUTCOMES[1]
        return OUTCOMES[2] if self.target in self.grasped else OUTCOMES[3]

    def step(self, action) -> tuple[dict, bool, bool]:
        """Apply one 7-DOF action (clipped to [-1, 1]); returns ``(obs, success, done)``."""
        cfg = self.cfg
        a = np.clip(np.asarray(action, np.float64).reshape(7), -1.0, 1.0)
        self.gripper[:2] = np.clip(self.gripper[:2] + a[:2] * cfg.move_step, 0.0, 1.0)
        self.gripper[2] = np.clip(self.gripper[2] + a[2] * cfg.z_step, 0.0, 1.0)
        close = a[6] < 0
        if close and not self.closed:
            self.held = self._block_under_gripper() if self.gripper[2] <= cfg.grasp_height else None
            if self.held is not None:
                self.grasped.add(self.held)
        elif not close and self.held is not None:
            self.blocks[self.held].z = 0.0  # released: the block drops where it is
            self.held = None
        self.closed = close
        if self.held is not None:
            block = self.blocks[self.held]
            block.x, block.y, block.z = self.gripper
        self.steps += 1
        success = self.success()
        return self.observation(), success, success or self.steps >= cfg.max_steps

    def _block_under_gripper(self) -> int | None:
        for i, b in enumerate(self.blocks):
            if max(abs(b.x - self.gripper[0]), abs(b.y - self.gripper[1])) <= self.cfg.block_half_size:
                return i
        return None

    def close(self) -> None:
        """Nothing to release (the interface of ``vla.eval.environments.EvalEnv``)."""

    # --- scripted expert ------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """Move above the target, lower, close, lift; from any state (also after mistakes)."""
        cfg, (x, y, z) = self.cfg, self.gripper
        action = np.zeros(7, np.float32)
        if self.held == self.target:
            action[2], action[6] = 1.0, -1.0  # lift, keep closed
            return action
        target = self.blocks[self.target]
        delta = np.array([target.x - x, target.y - y])
        action[6] = 1.0  # open (releases a wrong block)
        action[:2] = np.clip(delta / cfg.move_step, -1.0, 1.0)  # always centre on the target
        # Lower once roughly above it (not only when exactly there), so a policy that imitates
        # this learns to descend from the slightly-off positions it reaches itself.
        if np.abs(delta).max() > cfg.align_tolerance or self.held is not None:
            if z < cfg.lift_height and np.abs(delta).max() > cfg.block_half_size:
                action[2] = 1.0  # rise before travelling far, so nothing is dragged low
        elif z > cfg.grasp_height * 0.5:
            action[2] = -1.0
        else:
            action[6] = -1.0
        return action

    # --- rendering ------------------------------------------------------------------------
    def observation(self) -> dict:
        x, y, z = self.gripper
        wrist_half = self.cfg.wrist_view * (1.0 + z)
        static = self.render(0.5, 0.5, 0.5)
        return {
            "images": {
                "static": static,
                "wrist": self.render(x, y, wrist_half) if self.cfg.show_gripper else static.copy(),
            },
            "instruction": self.instruction,
            "state": np.array([x, y, z, -1.0 if self.closed else 1.0], np.float32),
        }

    def render(self, cx: float, cy: float, half: float) -> np.ndarray:
        """The scene from above, in the square view of half-width ``half`` centred on (cx, cy)."""
        size = self.cfg.image_size
        coords = cx - half + (np.arange(size) + 0.5) * (2 * half / size)
        rows = cy - half + (np.arange(size) + 0.5) * (2 * half / size)
        X, Y = np.meshgrid(coords, rows)
        image = np.empty((size, size, 3), np.uint8)
        image[:] = TABLE_RGB
        image[(X < 0) | (X > 1) | (Y < 0) | (Y > 1)] = OUTSIDE_RGB
        order = sorted(range(len(self.blocks)), key=lambda i: self.blocks[i].z)
        for i in order:  # lifted blocks are drawn last and larger (closer to the camera)
            b = self.blocks[i]
            h = self.cfg.block_half_size * (1.0 + 0.5 * b.z)
            image[(np.abs(X - b.x) <= h) & (np.abs(Y - b.y) <= h)] = COLOURS[b.colour]
        if not self.cfg.show_gripper:
            return image
        gx, gy, gz = self.gripper
        reach = np.maximum(np.abs(X - gx), np.abs(Y - gy))
        outer = 0.05 + 0.05 * gz  # the gripper looks larger the higher it is
        mask = reach <= outer if self.closed else (reach <= outer) & (reach >= outer - 0.03)
        image[mask] = GRIPPER_RGB
        return image
