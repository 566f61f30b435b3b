"""Every family from the files really published on the Hub (cut to 1-2 layers, random weights):
special ids, the instruction before [LRN] whatever the padding side, forward/backward, the run
image size, and an export that a Policy acts with on frames of another size than the tower's."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from published import FAMILIES, PADDING_SIDE, SPECIAL_IDS, build_published_folder
from transformers import AutoTokenizer

from vla.config import load_config
from vla.data import Normalization, load_metadata
from vla.data.pipeline import load_tokenizer
from vla.data.transforms import Tokenize
from vla.model import ModelConfig, build_model, run_image_size, save_export
from vla.model.backbones.base import resolve_special_ids
from vla.model.sequence import assemble
from vla.model.tokenizer import build_tiny_tokenizer
from vla.policy import Policy
from vla.sim import SimConfig, SyntheticEnv
from vla.typed_config import ConfigError

# Qwen2-VL and Qwen2.5-VL take any multiple of 28; SmolVLM2 one 512 px tile.
TOWER_SIZE = {"paligemma": 224, "kosmos2": 224, "llava": 336, "qwen2vl": 56, "qwen2_5_vl": 56, "smolvlm2": 512,
              "paligemma2": 224}
ANY_SIZE = ("qwen2vl", "qwen2_5_vl")
MAX_LEN = 16
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session")
def published_folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf-published")
    return {family: str(build_published_folder(family, root / family)) for family in FAMILIES}


def model_config(folder: str, family: str, **overrides) -> ModelConfig:
    base = dict(backbone=family, pretrained_path=folder, image_size=56, num_views=1, window_size=2,
                head_hidden_size=32, head_num_layers=1)
    return ModelConfig(**(base | overrides))


@pytest.fixture(scope="session")
def published_models(published_folders) -> dict:
    """Each family's model (from its folder) and tokenizer (as published, padding side included)."""
    models = {}
    for family, folder in published_folders.items():
        torch.manual_seed(0)
        model = build_model(model_config(folder, family)).eval()
        models[family] = (model, AutoTokenizer.from_pretrained(folder, local_files_only=True))
    return models


def tokenize(tokenizer, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer.padding_side = side
    enc = tokenizer(texts, add_special_tokens=False, padding="max_length", max_length=MAX_LEN, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def images(model, frames: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = model.image_size
    return torch.randint(0, 256, (1, frames, 1, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_special_ids_and_padding_side_as_published(published_models, family):
    model, tokenizer = published_models[family]
    assert tuple(model.backbone.special_ids) == SPECIAL_IDS[family]
    assert tokenizer.padding_side == PADDING_SIDE[family]


def test_no_special_id_anywhere_is_a_config_error_naming_family_and_folder(published_models):
    model, _ = published_models["llava"]
    config = model.backbone.hf_config.__class__.from_dict(model.backbone.hf_config.to_dict())
    config.get_text_config().bos_token_id = None
    tokenizer = build_tiny_tokenizer()
    tokenizer.bos_token = None
    with pytest.raises(ConfigError, match=r"llava backbone in /models/llava-1\.5.*BOS"):
        resolve_special_ids("llava", config, tokenizer, "/models/llava-1.5")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["published", "other"])
def test_lrn_follows_the_instructions_last_real_token(published_models, family, side):
    model, tokenizer = published_models[family]
    published = PADDING_SIDE[family]
    padding_side = published if side == "published" else {"left": "right", "right": "left"}[published]
    texts = ["open the drawer", "pick up the red block"]
    ids, mask = tokenize(tokenizer, texts, padding_side)
    backbone = model.backbone
    with torch.no_grad():
        seq = assemble(
            vision=torch.zeros(2, 4, backbone.hidden_size), text=backbone.embed_text(ids), text_mask=mask,
            action_token=model.action_token, special=backbone.embed_text(torch.tensor(backbone.special_ids)),
            num_views=1,
        )
        for i, text in enumerate(texts):
            real = tokenizer(text, add_special_tokens=False)["input_ids"]
            lrn = int(seq.action_positions[i, 0])
            before = seq.embeds[i, lrn - len(real):lrn]
            assert torch.equal(before, backbone.embed_text(torch.tensor(real))), f"{family}: not the instruction"
            assert torch.equal(seq.embeds[i, lrn], model.action_token[0])
            assert seq.attention_mask[i, :lrn + 1].all() and not seq.attention_mask[i, lrn + 2:].any()


def same_length_pair(tokenizer) -> list[str]:
    """Two instructions of the same token length (then only the words differ, not the padding)."""
    pairs = [("pick up the red block", "pick up the blue block"), ("open the drawer", "close the drawer"),
             ("turn on the light", "turn off the light"), ("push the block to the left", "push the block to the right")]
    for pair in pairs:
        if len({len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in pair}) == 1:
            return list(pair)
    raise AssertionError("no instruction pair of equal token length")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_instruction_reaches_the_lm_whatever_the_padding_side(published_models, family):
    model, tokenizer = published_models[family]
    frames = images(model)
    pair = same_length_pair(tokenizer)
    features = {}
    for side in ("left", "right"):
        ids, mask = tokenize(tokenizer, pair, side)
        with torch.no_grad():
            features[side] = model.action_features(frames.expand(2, -1, -1, -1, -1, -1), ids, mask)
    # Different instructions give different action features ...
    assert not torch.allclose(features["left"][0], features["left"][1], atol=1e-4)
    # ... and the padding side changes nothing.
    torch.testing.assert_close(features["left"], features["right"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_tokens_read_off_the_config_are_the_towers(published_models, family):
    model, _ = published_models[family]
    size = model.image_size
    with torch.no_grad():
        tokens = model.backbone.encode_images(torch.zeros(1, 3, size, size))
    assert model.backbone.vision_tokens(size) == tokens.shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_backward(published_folders, family):
    torch.manual_seed(0)
    model = build_model(model_config(published_folders[family], family))
    tokenizer = AutoTokenizer.from_pretrained(published_folders[family], local_files_only=True)
    ids, mask = tokenize(tokenizer, ["pick up the red block"], PADDING_SIDE[family])
    actions = torch.rand(1, 2, 1, 7) * 2 - 1
    out = model(images(model, frames=2), ids, mask)
    loss = model.loss(out, actions, torch.ones(1, 2, 1))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"{family}: {name}"
    assert model.action_token.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_run_image_size_is_the_towers_and_a_contradiction_is_logged(published_folders, family, caplog):
    cfg = model_config(published_folders[family], family, image_size=56)
    with caplog.at_level(logging.WARNING, logger="vla.model"):
        size = run_image_size(cfg)  # reads config.json only
    assert size == TOWER_SIZE[family]
    overridden = family not in ANY_SIZE
    assert ("model.image_size=56 is overridden" in caplog.text) == overridden
    if family in ANY_SIZE:
        with pytest.raises(ConfigError, match=f"model.image_size: {family} needs a multiple of 28, got 32"):
            run_image_size(model_config(published_folders[family], family, image_size=32))
    else:
        with pytest.raises(ConfigError, match="model.backbone: qwen2vl expects a 'qwen2_vl' checkpoint"):
            run_image_size(model_config(published_folders[family], "qwen2vl"))


@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_policy_acts_on_frames_of_another_size(published_folders, synthetic_root, tmp_path, family):
    folder = published_folders[family]
    cfg = load_config(None, [f"data.path={synthetic_root}", f"model.backbone={family}",
                             f"model.pretrained_path={folder}", "model.image_size=56", "model.window_size=2",
                             "model.head_hidden_size=32", "model.head_num_layers=1", f"data.max_text_len={MAX_LEN}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    normalization = Normalization.from_metadata(load_metadata(synthetic_root), cfg.data, use_state=False)
    save_export(tmp_path, model, run_config=cfg.to_dict(), normalization=normalization.to_dict())

    policy = Policy.load(str(tmp_path))
    assert policy.preprocessor.image_size == run_image_size(cfg.model) == TOWER_SIZE[family]
    env = SyntheticEnv(SimConfig(image_size=48))  # neither the tower's size nor model.image_size
    observations = [env.reset(0)]
    observations.append(env.step(env.expert_action())[0])
    assert policy.preprocessor.images(observations[:1]).shape[-2:] == (TOWER_SIZE[family],) * 2
    policy.reset()
    actions = np.stack([policy.act(obs) for obs in observations])
    assert actions.shape == (2, 7) and np.isfinite(actions).all()
    # The policy's tokenizer pads right, so its instruction ids are those training windows hold.
    _, mask = policy.preprocessor.instructions(observations[:1])
    assert mask[0, 0] == 1


@pytest.mark.parametrize("family", ["llava", "qwen2vl"])
def test_training_windows_hold_right_padded_instructions_with_a_left_padding_tokenizer(published_folders, family):
    """The data pipeline's Tokenize, offline evaluation and the Policy all lay instructions out alike."""
    tokenizer = load_tokenizer(published_folders[family])
    assert tokenizer.padding_side == "left"  # as published
    row = Tokenize(tokenizer, MAX_LEN)({"instruction": "pick up the red block"})
    real = int(row["attention_mask"].sum())
    assert 0 < real < MAX_LEN and row["attention_mask"][:real].all()


def test_paligemma_and_paligemma2_checkpoints_are_told_apart(published_folders):
    with pytest.raises(ConfigError, match=r"model.backbone: paligemma expects a 'gemma' LM, but .*paligemma2/config.json "
                                          r"holds a 'gemma2' one \(model.backbone=paligemma2\)"):
        run_image_size(model_config(published_folders["paligemma2"], "paligemma"))
    with pytest.raises(ConfigError, match="model.backbone: paligemma2 expects a 'gemma2' LM"):
        run_image_size(model_config(published_folders["paligemma"], "paligemma2"))


def test_smolvlm2_reads_one_512_px_tile_as_64_tokens(published_models):
    model, _ = published_models["smolvlm2"]
    assert model.image_size == 512 and model.backbone.vision_tokens(512) == 64  # 32 x 32 patches, shuffled by 4


@pytest.mark.parametrize("family", [f for f in FAMILIES if (CONFIGS / f"calvin_{f}.yaml").is_file()])
def test_the_fine_tuning_config_builds_its_model_from_the_published_folder(published_folders, family):
    """configs/calvin_<family>.yaml as shipped, pointed at the (cut-down) published folder."""
    cfg = load_config(CONFIGS / f"calvin_{family}.yaml", [f"model.pretrained_path={published_folders[family]}",
                                                          "model.lm_layers=1"])  # the cut folder has 1-2 blocks
    model = build_model(cfg.model)
    assert model.backbone.family == family and len(model.backbone.decoder_blocks()) == 1
    assert model.image_size == run_image_size(cfg.model)
