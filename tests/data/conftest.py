"""Tiny datasets for the data tests (session-scoped: written once)."""

from __future__ import annotations

import pytest
from episode_factories import MARKER_LENGTHS, marker_episode

from vla.data import EpisodeWriter


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    from vla.model.tokenizer import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def marker_dataset(tmp_path_factory) -> str:
    """Six episodes of known lengths, spread over several small shards, plus a val split."""
    root = str(tmp_path_factory.mktemp("marker"))
    with EpisodeWriter(root, ["static", "wrist"], max_shard_bytes=3000) as writer:
        for i, steps in enumerate(MARKER_LENGTHS):
            writer.write(marker_episode(i, steps), "train")
        writer.write(marker_episode(0, 6), "val")
    return root


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> str:
    from vla.data.converters.synthetic import convert_synthetic

    root = str(tmp_path_factory.mktemp("synthetic"))
    convert_synthetic(root, episodes=12, val_episodes=3, image_size=32, max_shard_bytes=40_000)
    return root
