"""MetaWorld (Farama's ``metaworld==3.1.1``, MuJoCo) behind the same small interface as the
synthetic task: ``reset(seed) -> obs``, ``step(action) -> (obs, success, done)``, ``outcome()``,
``expert_action()``, ``close()``. The demonstrations (``vla.data.converters.metaworld``) and the
closed-loop evaluation (``vla.eval.environments``) both go through this one class.

The protocol follows LeRobot's MetaWorld wrapper (src/lerobot/envs/metaworld.py):
- one fixed instruction per task (``INSTRUCTIONS``, LeRobot's ``metaworld_config.json``);
- state = ``agent_pos`` = hand x, y, z + gripper opening (the first 4 values of MetaWorld's obs);
- the camera ``corner2`` moved to (0.75, 0.075, 0.7) and its image turned 180 degrees;
- objects placed by the seed (``_freeze_rand_vec`` off, ``seeded_rand_vec`` on), so
  ``reset(seed)`` gives the same scene for the same seed; ``info["success"]`` ends an episode.
The second camera is ``gripperPOV`` (looking down past the fingers: the puck, the goal and the
handle close up). Images are rendered by one ``mujoco.Renderer`` per task and image size in a
process, with shadows and reflections off (``shared_renderer``; gymnasium's viewer with the
default scene flags costs 2-4x more per frame).

Action (4 values in [-1, 1]): ``dx, dy, dz`` (hand motion, 1 cm per unit and step) and the
gripper effort (a continuous torque: +1 closes, -1 opens; the scripted experts hold values such
as 0, 0.6 or 1, so it is recorded as a continuous dimension, not a binary gripper).
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from dataclasses import dataclass
from functools import cache

import numpy as np

from vla.typed_config import check

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported
# PyOpenGL (imported by mujoco's EGL backend) logs at INFO that its optional C accelerator is absent;
# rendering does not use it, and the entry points log at INFO.
logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)

# LeRobot's fixed instruction per task (src/lerobot/envs/metaworld_config.json, TASK_DESCRIPTIONS).
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "Pick up a nut and place it onto a peg",
    "basketball-v3": "Dunk the basketball into the basket",
    "bin-picking-v3": "Grasp the puck from one bin and place it into another bin",
    "box-close-v3": "Grasp the cover and close the box with it",
    "button-press-topdown-v3": "Press a button from the top",
    "button-press-topdown-wall-v3": "Bypass a wall and press a button from the top",
    "button-press-v3": "Press a button",
    "button-press-wall-v3": "Bypass a wall and press a button",
    "coffee-button-v3": "Push a button on the coffee machine",
    "coffee-pull-v3": "Pull a mug from a coffee machine",
    "coffee-push-v3": "Push a mug under a coffee machine",
    "dial-turn-v3": "Rotate a dial 180 degrees",
    "disassemble-v3": "Pick a nut out of a peg",
    "door-close-v3": "Close a door with a revolving joint",
    "door-lock-v3": "Lock the door by rotating the lock clockwise",
    "door-open-v3": "Open a door with a revolving joint",
    "door-unlock-v3": "Unlock the door by rotating the lock counter-clockwise",
    "hand-insert-v3": "Insert the gripper into a hole",
    "drawer-close-v3": "Push and close a drawer",
    "drawer-open-v3": "Open a drawer",
    "faucet-open-v3": "Rotate the faucet counter-clockwise",
    "faucet-close-v3": "Rotate the faucet clockwise",
    "hammer-v3": "Hammer a screw on the wall",
    "handle-press-side-v3": "Press a handle down sideways",
    "handle-press-v3": "Press a handle down",
    "handle-pull-side-v3": "Pull a handle up sideways",
    "handle-pull-v3": "Pull a handle up",
    "lever-pull-v3": "Pull a lever down 90 degrees",
    "peg-insert-side-v3": "Insert a peg sideways",
    "pick-place-wall-v3": "Pick a puck, bypass a wall and place the puck",
    "pick-out-of-hole-v3": "Pick up a puck from a hole",
    "reach-v3": "Reach a goal position",
    "push-back-v3": "Push the puck to a goal",
    "push-v3": "Push the puck to a goal",
    "pick-place-v3": "Pick and place a puck to a goal",
    "plate-slide-v3": "Slide a plate into a cabinet",
    "plate-slide-side-v3": "Slide a plate into a cabinet sideways",
    "plate-slide-back-v3": "Get a plate from the cabinet",
    "plate-slide-back-side-v3": "Get a plate from the cabinet sideways",
    "peg-unplug-side-v3": "Unplug a peg sideways",
    "soccer-v3": "Kick a soccer into the goal",
    "stick-push-v3": "Grasp a stick and push a box using the stick",
    "stick-pull-v3": "Grasp a stick and pull a box with the stick",
    "push-wall-v3": "Bypass a wall and push a puck to a goal",
    "reach-wall-v3": "Bypass a wall and reach a goal",
    "shelf-place-v3": "Pick and place a puck onto a shelf",
    "sweep-into-v3": "Sweep a puck into a hole",
    "sweep-v3": "Sweep a puck off the table",
    "window-open-v3": "Push and open a window",
    "window-close-v3": "Push and close a window",
}
# The benchmark's own task lists (metaworld.env_dict.MT10_V3 / MT50_V3).
MT10 = ("reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3")
MT50 = tuple(sorted(INSTRUCTIONS))
TASK_LISTS = {"MT10": MT10, "MT50": MT50}

CAMERAS = ("corner2", "gripperPOV")
CORNER2_POSITION = (0.75, 0.075, 0.7)  # LeRobot's placement of corner2 (whole table in view)
ACTION_NAMES = ("dx", "dy", "dz", "gripper_effort")
STATE_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_opening")
MAX_PATH_LENGTH = 500  # MetaWorld refuses to step an episode past this
OUTCOMES = ("success", "reached the object, not solved", "never reached the object")
GL_HELP = ("apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri (with MUJOCO_GL=egl) "
           "or apt-get install -y libosmesa6 (with MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa)")


class MetaWorldError(ValueError):
    """MetaWorld cannot run as asked (unknown task, missing package or OpenGL); one line saying why."""


def resolve_tasks(text: str, flag: str = "--tasks") -> list[str]:
    """``"reach-v3,push-v3"``, ``"MT10"`` or ``"MT50"`` -> task names; an unknown one lists the valid ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise MetaWorldError(f"{flag}: no task given (MT10, MT50 or names such as reach-v3,push-v3)")
    tasks: list[str] = []
    for name in names:
        if name in TASK_LISTS:
            tasks += TASK_LISTS[name]
        elif name in INSTRUCTIONS:
            tasks.append(name)
        else:
            raise MetaWorldError(f"{flag}: unknown MetaWorld task {name!r}; valid: MT10, MT50, {', '.join(MT50)}")
    return list(dict.fromkeys(tasks))  # in order, once each


def check_gl() -> None:
    """Import metaworld and render one frame; a missing package or OpenGL context is one line."""
    try:
        import metaworld  # noqa: F401
        import mujoco
    except ImportError as err:
        raise MetaWorldError(f"MetaWorld is not installed ({err}): pip install -e \".[metaworld]\"") from None
    except Exception as err:  # mujoco refuses an unusable MUJOCO_GL at import
        raise MetaWorldError(f"MuJoCo cannot render (MUJOCO_GL={os.environ.get('MUJOCO_GL')}: "
                             f"{type(err).__name__}: {err}); install {GL_HELP}") from None
    try:
        renderer = mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8)
        renderer.render()
        renderer.close()
    except Exception as err:
        raise MetaWorldError(f"MuJoCo cannot open an OpenGL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')}: "
                             f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
                             f"install {GL_HELP}") from None


@cache
def benchmark_task(task: str):
    """The ``metaworld.Task`` an env must be given before it steps (built once per process: ~1.5 s)."""
    import metaworld

    return metaworld.MT1(task, seed=0).train_tasks[0]


_RENDERERS: dict[tuple[str, int], object] = {}


def shared_renderer(task: str, model, size: int):
    """One ``mujoco.Renderer`` per task and image size in a process (creating one costs seconds: a
    GL context and the textures), shadows and reflections off. Every env of a task renders its
    own ``MjData`` with it: the scene is built from the data's computed positions, and the
    model parts it reads (geometry, colours, cameras) are the same for every env of the task."""
    key = (task, size)
    if key not in _RENDERERS:
        import mujoco

        renderer = mujoco.Renderer(model, size, size)
        if not _RENDERERS:  # after the first GL context, so after mujoco's own atexit (which terminates EGL): runs first
            atexit.register(_close_renderers)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        _RENDERERS[key] = renderer
    return _RENDERERS[key]


def _close_renderers() -> None:
    """Free the GL contexts while EGL is still loaded (at interpreter teardown freeing them raises)."""
    while _RENDERERS:
        _RENDERERS.popitem()[1].close()


@dataclass
class MetaWorldConfig:
    image_size: int = 64  # both cameras render square images of this many pixels
    max_steps: int = 200  # closed-loop cap (the experts of MT10 finish in 45-250 steps)
    cameras: tuple[str, ...] = CAMERAS

    def validate(self) -> None:
        check(self.image_size >= 8, "image_size", "must be >= 8 pixels")
        check(1 <= self.max_steps <= MAX_PATH_LENGTH, "max_steps", f"must be in [1, {MAX_PATH_LENGTH}]")


class MetaWorldEnv:
    """One MetaWorld task; ``rendering`` False leaves ``obs["images"]`` empty (physics only, ~1 ms a step)."""

    def __init__(self, task: str, cfg: MetaWorldConfig | None = None, render: bool = True):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        from metaworld.policies import ENV_POLICY_MAP

        if task not in INSTRUCTIONS:
            raise MetaWorldError(f"unknown MetaWorld task {task!r}; valid: {', '.join(MT50)}")
        self.cfg = cfg or MetaWorldConfig()
        self.cfg.validate()
        self.task = task
        self.instruction = INSTRUCTIONS[task]
        self.env = ALL_V3_ENVIRONMENTS[task]()
        self.env.set_task(benchmark_task(task))  # a task must be set; the seed then places the objects
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.env.model.cam_pos[self.env.model.camera("corner2").id] = CORNER2_POSITION
        self.expert = ENV_POLICY_MAP[task]()
        self.rendering = render  # may be switched per episode (a physics-only dry run, then a recorded one)
        self.raw = np.zeros(39)
        self.steps = 0
        self.succeeded = False
        self.near_object = False

    def reset(self, seed: int) -> dict:
        """The scene of ``seed`` (same seed, same scene and frames, whatever ran before); returns the observation."""
        import mujoco

        mujoco.mj_resetData(self.env.model, self.env.data)  # no solver warm start left from the last episode
        self.env.seed(seed)
        self.raw, _ = self.env.reset()
        self.steps, self.succeeded, self.near_object = 0, False, False
        return self.observation()

    def step(self, action) -> tuple[dict, bool, bool]:
        """Apply one 4-value action (clipped to [-1, 1]); returns ``(obs, success, done)``."""
        action = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        self.raw, _, _, _, info = self.env.step(action)
        self.steps += 1
        self.succeeded = bool(info["success"])
        self.near_object = self.near_object or bool(info.get("near_object", 0.0))
        return self.observation(), self.succeeded, self.succeeded or self.steps >= self.cfg.max_steps

    def expert_action(self) -> np.ndarray:
        """The task's scripted expert (``metaworld.policies``) on the current state, clipped to [-1, 1]."""
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips, and so do we
            warnings.simplefilter("ignore", UserWarning)
            action = self.expert.get_action(self.raw)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def outcome(self) -> str:
        """One of ``OUTCOMES``: success, else whether the hand ever came near the task's object."""
        if self.succeeded:
            return OUTCOMES[0]
        return OUTCOMES[1] if self.near_object else OUTCOMES[2]

    def observation(self) -> dict:
        return {"images": self.render() if self.rendering else {},
                "instruction": self.instruction,
                "state": self.raw[:4].astype(np.float32)}

    def render(self) -> dict[str, np.ndarray]:
        renderer = shared_renderer(self.task, self.env.model, self.cfg.image_size)
        images = {}
        for camera in self.cfg.cameras:
            renderer.update_scene(self.env.data, camera=camera)
            image = renderer.render()
            images[camera] = np.ascontiguousarray(image[::-1, ::-1]) if camera.startswith("corner") else image.copy()
        return images

    def close(self) -> None:
        self.env.close()  # the shared renderer stays for the process's next env of this task
