"""What FSDP2 needs of the modules it wraps, checked the same way on every torch version, and
what the GPU benchmark needs: the model, ``parallelize``, the training step and the benchmark
itself import without Ray or ``vla.data``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_flatten

from vla.model import build_model
from vla.model.config import ModelConfig

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("head", ["lstm", "mlp"])
def test_head_and_root_outputs_are_pytrees_of_tensors(head):
    """FSDP2 hooks backward on the tensors it finds by flattening a module's output; an object
    it cannot flatten (a dataclass before torch 2.13) hides them, and the module's freed
    parameters are then read in backward. The head and the root are the sharded modules whose
    outputs are not plain tensors."""
    model = build_model(ModelConfig(head=head, tiny_hidden_size=32, tiny_num_layers=1, window_size=2))
    images = torch.randint(0, 256, (2, 2, 2, 3, 32, 32), dtype=torch.uint8)
    ids = torch.randint(3, 100, (2, 6))
    features = model.action_features(images, ids, torch.ones_like(ids)).float()
    for output in (model.head(features), model(images, ids, torch.ones_like(ids))):
        leaves, _ = tree_flatten(output)
        assert len(leaves) == 2 and all(isinstance(leaf, torch.Tensor) for leaf in leaves), leaves
        assert all(leaf.requires_grad for leaf in leaves)
        assert (output.continuous.shape[-1], output.gripper_logits.shape) == (6, (*output.continuous.shape[:-1], 1))


def test_model_and_parallelize_import_without_ray_or_the_data_package():
    """A subprocess with ``ray`` blocked (as on a GPU machine without Ray) imports and builds them."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import vla.model, vla.train.parallelize, vla.train.step\n"
        "from vla.model import build_model\n"
        "from vla.model.config import ModelConfig\n"
        "build_model(ModelConfig(tiny_hidden_size=32, tiny_num_layers=1))\n"
        "import benchmarks.gpu_step\n"
        "loaded = sorted(m for m in sys.modules if m == 'vla.data' or m.startswith(('vla.data.', 'ray.')))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("backbone", ["paligemma", "kosmos2", "llava", "qwen2vl"])
def test_tokens_per_frame_is_the_sequence_length_the_lm_runs(backbone):
    """``tokens_per_s`` counts what the LM processes: the length its first block really sees."""
    from vla.train.progress import lm_tokens_per_frame

    model = build_model(ModelConfig(backbone=backbone, tiny_hidden_size=32, tiny_num_layers=1, window_size=2))
    seen = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[-2])

    model.backbone.decoder_blocks()[0].register_forward_pre_hook(record, with_kwargs=True)
    ids = torch.randint(3, 100, (1, 7))
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 2, 2, 3, 32, 32), dtype=torch.uint8), ids, torch.ones_like(ids))
    assert seen and set(seen) == {lm_tokens_per_frame(model, text_len=7)}
    assert seen[0] > 2 * 7  # vision tokens of both views are in it, not only the instruction


def test_gpu_step_counts_the_attention_of_grouped_kv_heads():
    """The benchmark's MFU counts Gemma's attention (1 KV head for 4 query heads): with SDPA,
    ``FlopCounterMode`` raised on torch 2.11 and counted it as zero on 2.13."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.gpu_step import PUBLISHED, eager_attention, shrink
    from vla.model import BACKBONES
    from vla.train.progress import lm_tokens_per_frame

    config = shrink(json.loads((PUBLISHED / "paligemma" / "config.json").read_text()))
    config["text_config"]["num_attention_heads"] = 4
    text = config["text_config"]
    assert text["num_key_value_heads"] < text["num_attention_heads"]
    hf_config = BACKBONES["paligemma"].hf_model_class.config_class.from_dict(config)
    model = build_model(ModelConfig(backbone="paligemma"), hf_config=hf_config)
    ids = torch.randint(3, 100, (1, 8))
    images = torch.randint(0, 256, (1, 1, 2, 3, model.image_size, model.image_size), dtype=torch.uint8)
    with eager_attention(model), FlopCounterMode(display=False) as counter:
        model(images, ids, torch.ones_like(ids))
    attention = counter.get_flop_counts()["VLAModel.backbone.model.language_model.layers.0.self_attn"]
    seq = lm_tokens_per_frame(model, text_len=8)
    # Q K^T and the weighted sum over V: 2 x (2 * heads * seq^2 * head_dim) per frame.
    assert attention[torch.ops.aten.bmm] == 4 * text["num_attention_heads"] * seq**2 * text["head_dim"]
    assert all(config._attn_implementation == "sdpa" for config in (hf_config, hf_config.text_config))
