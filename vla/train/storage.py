"""Run folders on a local disk or object storage (``s3://``, ``gs://``) through pyarrow."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


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
