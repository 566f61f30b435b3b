"""Where files live: a local disk or object storage (``s3://``, ``gs://``), through pyarrow.

Every part of ``vla`` that reads or writes a dataset, a run folder or an export goes through
this module, and so does the node cache: ``cached_file`` keeps a node-local copy of one remote
file (a dataset shard read by many decode tasks), ``localize`` one of a remote folder (an
export loaded by a policy). A copy is used while the remote file's size and modification time
are those it was downloaded at; it is downloaded beside its place and renamed into it, under a
file lock, so tasks of one node share one download and an interrupted download is never taken
for a copy. Copies live under ``$VLA_CACHE_DIR`` (default ``~/.cache/vla``) at
``<scheme>/<bucket>/<key>``; their stamps and locks in ``.stamps/`` beside them.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from vla.typed_config import ConfigError

CACHE_DIR_ENV = "VLA_CACHE_DIR"
STAMPS_DIR = ".stamps"
SCHEMES = {"s3": "s3://", "gcs": "gs://", "local": ""}


class StorageError(ConfigError):
    """A storage location that cannot be used: one line naming the field, the location and why."""


def is_uri(path: str) -> bool:
    return "://" in path


def normalize_path(path: str) -> str:
    """Expand ``~`` and make local paths absolute (Ray Train wants absolute paths)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def run_path(storage_path: str, name: str) -> str:
    """The folder of run ``name``: where Ray Train keeps its checkpoints and we keep the rest."""
    return f"{normalize_path(storage_path).rstrip('/')}/{name}"


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``path`` and the path inside it (local paths made absolute)."""
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
    else:
        fs, inner = pafs.LocalFileSystem(), normalize_path(path)
    return fs, inner.rstrip("/") or "/"


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def write_bytes(path: str, data: bytes) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(data)


def upload(local: Path, dest: str) -> None:
    """Copy a local file or folder to ``dest`` (a local path or URI); folders recursively."""
    if not local.is_dir():
        write_bytes(dest, local.read_bytes())
        return
    fs, inner = filesystem(dest)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """``path`` inside ``fs`` as a location to print and reuse: with its scheme (``s3://...``)."""
    return f"{SCHEMES.get(fs.type_name, fs.type_name + '://')}{path}"


def with_scheme_of(reference: str, path: str | None) -> str | None:
    """``path`` as pyarrow reports it inside ``reference``'s filesystem (``bucket/key``, no
    scheme) as a location with ``reference``'s scheme; paths that have one, or a local
    ``reference``, are returned as they are."""
    if path is None or is_uri(path) or not is_uri(reference):
        return path
    return f"{reference.split('://', 1)[0]}://{path.lstrip('/')}"


def check_storage(path: str, field: str, writable: bool = False) -> None:
    """Fail now, before any worker starts, if ``path`` (a URI) is unreachable or (``writable``) read-only.

    Credentials and endpoint come from the environment as for any AWS client
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, an instance role, ...).
    """
    if not is_uri(path):
        return
    try:
        fs, inner = filesystem(path)
        bucket = inner.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"{field} {path}: bucket {bucket!r} does not exist (create it first)")
        if writable:
            probe = f"{inner.rstrip('/')}/.vla_write_check"
            with fs.open_output_stream(probe) as out:
                out.write(b"")
            fs.delete_file(probe)
    except OSError as err:
        raise StorageError(f"{field} {path}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    text = " ".join(str(err).split())
    if "ACCESS_DENIED" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return f"access denied: check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, the instance role) ({text})"
    return text


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/vla").expanduser()


def open_file(root: str, file: str, cache: bool):
    """``file`` (a path inside ``root``'s filesystem) opened for reading: its node-local copy when
    ``root`` is remote and ``cache``, else the file itself."""
    fs, _ = filesystem(root)
    if not cache or isinstance(fs, pafs.LocalFileSystem):
        return fs.open_input_file(file)
    return pafs.LocalFileSystem().open_input_file(str(cached_file(with_scheme_of(root, file))))


@functools.cache
def remote_stamp(uri: str) -> list[int]:
    """Size and modification time of the remote file ``uri`` (once per process: a dataset does
    not change under a running job; a new job sees a rewritten one)."""
    fs, inner = filesystem(uri)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(uri)
    return [info.size, info.mtime_ns or 0]


def cached_file(uri: str, stamp: list[int] | None = None) -> Path:
    """The node-local copy of the remote file ``uri``, downloaded if missing or stale (``stamp``:
    its size and modification time when the caller has listed them, else asked once per process)."""
    stamp = stamp if stamp is not None else remote_stamp(uri)
    key = uri.replace("://", "/", 1)
    local = cache_root() / key
    sidecar = cache_root() / STAMPS_DIR / f"{key}.stamp"
    if _is_current(local, sidecar, stamp):
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    with open(sidecar.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait and reuse it
        if not _is_current(local, sidecar, stamp):
            _download(uri, local)
            sidecar.write_text(json.dumps(stamp))
    return local


def _is_current(local: Path, sidecar: Path, stamp: list[int]) -> bool:
    """Whether ``local`` is a complete copy of the remote file as ``stamp`` describes it now."""
    return local.is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == stamp


def _download(uri: str, local: Path) -> None:
    fs, inner = filesystem(uri)
    fd, partial = tempfile.mkstemp(prefix=f".{local.name}.", dir=local.parent)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(inner) as stream:
            while chunk := stream.read(8 << 20):
                out.write(chunk)
        os.replace(partial, local)
    except BaseException:
        os.unlink(partial)
        raise


def remote_listing(path: str) -> dict[str, list[int]]:
    """Every file under the folder ``path``: relative name -> [size, mtime in ns]."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    base = len(inner) + 1
    return {info.path[base:]: [info.size, info.mtime_ns or 0] for info in infos if info.type == pafs.FileType.File}


def localize(path: str) -> str:
    """A local folder holding what ``path`` holds: ``path`` itself when local, else the node
    cache's copy of each of its files (files no longer in the remote folder are removed)."""
    if not is_uri(path):
        return os.path.expanduser(path)
    path = path.rstrip("/")
    try:
        listing = remote_listing(path)
    except OSError as err:
        raise StorageError(f"{path}: {_reason(err)}") from None
    if not listing:
        raise StorageError(f"{path}: no such folder (or it is empty)")
    for name, stamp in listing.items():
        cached_file(f"{path}/{name}", stamp)
    local = cache_root() / path.replace("://", "/", 1)
    for stale in [p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and str(p.relative_to(local)) not in listing]:
        stale.unlink()
    return str(local)
