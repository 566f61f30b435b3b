"""Dataset shards on object storage read from a node-local copy (``data.cache_remote``).

A decode task reads one episode: from ``s3://`` that is a request for the file's size, one
for its footer and one per column chunk of the episode's row group, and the row group holds
many episodes (up to ``ROW_GROUP_BYTES``), so every episode costs several round trips and
the bytes of its neighbours too. With the cache, the first task on a node that needs a shard
downloads it whole (one sequential read) into ``$VLA_CACHE_DIR/shards/<scheme>/<bucket>/<key>``;
every later read of that shard on that node, in this epoch, later epochs or later runs, is a
local read. A copy is used while the remote file's size and modification time are those it
was downloaded at (checked once per process and shard); tasks of one node that want the same
shard wait for one download (a file lock), which is written beside its place and renamed
into it, so an interrupted download is never taken for a copy.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from vla.data.metadata import open_root
from vla.train.storage import cache_root

SHARDS_DIR = "shards"


def open_shard(root: str, file: str, cache: bool) -> pa.NativeFile:
    """``file`` (a path inside ``root``'s filesystem, as the episode index holds it) opened for
    reading: a node-local copy when ``root`` is remote and ``cache``, else the file itself."""
    fs, _ = open_root(root)
    if not cache or isinstance(fs, pafs.LocalFileSystem):
        return fs.open_input_file(file)
    return pafs.LocalFileSystem().open_input_file(str(local_copy(root.split("://", 1)[0], file)))


def local_copy(scheme: str, file: str) -> Path:
    """The node-local copy of ``scheme://file``, downloaded if missing or stale."""
    local = cache_root() / SHARDS_DIR / scheme / file.lstrip("/")
    stamp = remote_stamp(scheme, file)
    sidecar = local.with_name(local.name + ".stamp")
    if is_current(local, sidecar, stamp):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    with open(local.with_name(local.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and reuse it
        if not is_current(local, sidecar, stamp):
            download(scheme, file, local)
            sidecar.write_text(json.dumps(stamp))
    return local


def is_current(local: Path, sidecar: Path, stamp: list[int]) -> bool:
    """Whether ``local`` is a complete copy of the remote file as ``stamp`` describes it now."""
    return local.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == stamp


@functools.cache
def remote_stamp(scheme: str, file: str) -> list[int]:
    """Size and modification time of the remote file (once per process: a dataset does not
    change under a running job; a new job sees a rewritten one)."""
    fs, inner = pafs.FileSystem.from_uri(f"{scheme}://{file}")
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{scheme}://{file}")
    return [info.size, info.mtime_ns or 0]


def download(scheme: str, file: str, local: Path) -> None:
    fs, inner = pafs.FileSystem.from_uri(f"{scheme}://{file}")
    fd, partial = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(inner) as stream:
            while chunk := stream.read(8 << 20):
                out.write(chunk)
        os.replace(partial, local)
    except BaseException:
        os.unlink(partial)
        raise
