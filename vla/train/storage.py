"""Run folders on a local disk or object storage (``s3://``, ``gs://``) through pyarrow."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from vla.configuration import ConfigError


def is_uri(path: str) -> bool:
    return "://" in path


def normalize_storage_path(path: str) -> str:
    """Expand ``~`` and make local paths absolute (Ray Train wants absolute paths)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def run_path(storage_path: str, name: str) -> str:
    """The folder of run ``name``: where Ray Train keeps its checkpoints and we keep the rest."""
    return f"{normalize_storage_path(storage_path).rstrip('/')}/{name}"


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), path)


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


SCHEMES = {"s3": "s3://", "gcs": "gs://", "local": ""}


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


class StorageError(ConfigError):
    """A storage location that cannot be used: one line naming the field, the location and why."""


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


CACHE_DIR_ENV = "VLA_CACHE_DIR"
MANIFEST_FILE = ".vla_manifest.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or "~/.cache/vla/remote").expanduser()


def remote_listing(path: str) -> dict[str, list]:
    """Every file under the folder ``path``: relative name -> [size, mtime in ns]."""
    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=True, allow_not_found=True))
    base = len(inner.rstrip("/")) + 1
    return {
        info.path[base:]: [info.size, info.mtime_ns]
        for info in infos
        if info.type == pafs.FileType.File
    }


def localize(path: str) -> str:
    """A local folder holding what ``path`` holds: ``path`` itself when local, else a cached copy.

    The copy lives under ``$VLA_CACHE_DIR`` (default ``~/.cache/vla/remote``) at
    ``<scheme>/<bucket>/<key>``; it is reused while the remote listing (names, sizes,
    modification times) is unchanged, else fetched again. A copy is downloaded beside its
    final place and renamed into it, so an interrupted download never passes for a cached one.
    """
    if not is_uri(path):
        return os.path.expanduser(path)
    scheme, rest = path.split("://", 1)
    local = cache_root() / scheme / rest.strip("/")
    try:
        listing = remote_listing(path)
    except OSError as err:
        raise StorageError(f"{path}: {_reason(err)}") from None
    if not listing:
        raise StorageError(f"{path}: no such folder (or it is empty)")
    manifest = local / MANIFEST_FILE
    if manifest.is_file() and json.loads(manifest.read_text()) == listing:
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=local.parent))
    fs, inner = filesystem(path)
    pafs.copy_files(inner, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    (staging / MANIFEST_FILE).write_text(json.dumps(listing))
    if local.exists():
        shutil.rmtree(local)
    staging.rename(local)
    return str(local)
