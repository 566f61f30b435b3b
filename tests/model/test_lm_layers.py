"""``model.lm_layers=K``: only the first K decoder blocks of a pretrained LM are built and read (SmolVLA's cut)."""

from __future__ import annotations

import pytest
import torch
from published import build_published_folder
from safetensors.torch import load_file, save_file
from torch import nn

from vla.model import ModelConfig, build_model, build_sharded_model, load_export, save_export
from vla.typed_config import ConfigError

FAMILY = "paligemma2"  # published cut to 2 Gemma-2 blocks: a sliding-window one, then a full one


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_published_folder(FAMILY, tmp_path_factory.mktemp("lm-layers") / FAMILY)


def model_config(folder, **options) -> ModelConfig:
    return ModelConfig(backbone=FAMILY, pretrained_path=str(folder), num_views=1, window_size=1, head_hidden_size=32,
                       head_num_layers=1, **options)


def batch(model):
    g = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.randint(0, 256, (1, 1, 1, 3, size, size), dtype=torch.uint8, generator=g)
    return images, torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)


def without_cut_blocks(folder) -> None:
    """Delete every weight of decoder block 1 from the checkpoint: a loader that read one would fail."""
    file = folder / "model.safetensors"
    state = load_file(str(file))
    kept = {k: v for k, v in state.items() if ".layers.1." not in k}  # the tower has one block: layers.0
    assert len(kept) < len(state)
    save_file(kept, str(file), metadata={"format": "pt"})


def test_the_first_k_blocks_compute_what_the_full_model_cut_after_k_does(folder):
    torch.manual_seed(0)
    full = build_model(model_config(folder)).eval()
    torch.manual_seed(0)
    cut = build_model(model_config(folder, lm_layers=1)).eval()
    assert len(full.backbone.decoder_blocks()) == 2 and len(cut.backbone.decoder_blocks()) == 1
    assert cut.backbone.text_config.layer_types == full.backbone.text_config.layer_types[:1]
    assert full.backbone.hf_config.get_text_config().num_hidden_layers == 2  # the folder's config is not changed
    full.backbone.model.language_model.layers = nn.ModuleList(full.backbone.decoder_blocks()[:1])
    with torch.no_grad():
        torch.testing.assert_close(cut.action_features(*batch(cut)), full.action_features(*batch(full)))


def test_the_cut_blocks_are_never_read(tmp_path):
    folder = build_published_folder(FAMILY, tmp_path / FAMILY)
    without_cut_blocks(folder)
    cfg = model_config(folder, lm_layers=1)
    whole = build_model(cfg)  # transformers' from_pretrained on the cut config
    lean = build_sharded_model(cfg, lambda m: None, torch.device("cpu"), torch.float32)  # per-tensor reader
    assert sum(p.numel() for p in lean.parameters()) == sum(p.numel() for p in whole.parameters())
    for (name, a), (_, b) in zip(whole.backbone.named_parameters(), lean.backbone.named_parameters()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="holds no weights"):  # all blocks: block 1 is missing indeed
        build_sharded_model(model_config(folder), lambda m: None, torch.device("cpu"), torch.float32)


def test_an_export_of_a_cut_model_loads_cut(folder, tmp_path):
    torch.manual_seed(0)
    model = build_model(model_config(folder, lm_layers=1)).eval()
    save_export(tmp_path, model, run_config={}, normalization={})
    loaded, cfg = load_export(tmp_path)
    assert cfg.lm_layers == 1 and len(loaded.backbone.decoder_blocks()) == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.action_features(*batch(loaded)), model.action_features(*batch(model)))


def test_more_layers_than_the_lm_has_is_a_config_error(folder):
    with pytest.raises(ConfigError, match=r"model.lm_layers: 3 exceeds the 2 decoder blocks of the LM in .*paligemma2"):
        build_model(model_config(folder, lm_layers=3))
    with pytest.raises(ConfigError, match="lm_layers: must be >= 1"):
        model_config(folder, lm_layers=0).validate()
