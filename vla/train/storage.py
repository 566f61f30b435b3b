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


def upload(local: Path, dest: str) -> None:
    """Copy a local file or folder to ``dest`` (a local path or URI); folders recursively."""
    if not is_uri(dest):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
    fs, dest_path = pafs.FileSystem.from_uri(dest) if is_uri(dest) else (pafs.LocalFileSystem(), dest)
    if local.is_dir():
        fs.create_dir(dest_path, recursive=True)
        pafs.copy_files(str(local), dest_path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    else:
        with fs.open_output_stream(dest_path) as out:
            out.write(local.read_bytes())
