"""Starting Ray the one way every entry point does."""

from __future__ import annotations

import os


def start_or_join_ray(**kwargs) -> None:
    """Join the cluster at ``RAY_ADDRESS`` when it is set (``ray job submit`` sets it), else start a
    local Ray instance, never attaching to a cluster some other process on this machine started
    with ``ray start`` (plain ``ray.init()`` would join the one ``/tmp/ray`` points at)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if os.environ.get("RAY_ADDRESS") else "local", **kwargs)
