"""Memory-lean loading of big backbones (no Ray here): build on meta, shard, then read each rank's rows.

The torchtitan pattern, for training workers::

    model = build_model(cfg.model, dtype=dtype, backbone_on_meta=True)
    load = pretrained_loader(model)
    parallelize(model, tcfg, device, world_size)
    load(device)

``build_sharded_model`` does the same with any sharding function. What happens:

1. the backbone is built on the meta device (no memory, no init); the head, the action token and
   every buffer are real (small, and initialized as usual);
2. ``parallelize`` applies FSDP2: each parameter becomes a DTensor sharded on dim 0, still on meta;
3. ``to_empty`` allocates each rank's shard only, in the training precision;
4. every shard is filled from the checkpoint's safetensors, reading just this rank's rows
   (``safe_open(...).get_slice(key)[start:stop]``), one tensor at a time.

No rank ever holds a full copy: the peak is its shard plus one tensor's rows. The same
reader loads an export for inference in its inference dtype (``load_state``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from vla.model.config import ModelConfig
from vla.model.trainable import is_lora_parameter
from vla.model.vla_model import VLAModel, build_model
from vla.typed_config import ConfigError

Reader = Callable[[slice | None], torch.Tensor]  # rows of dim 0 (None: the whole tensor)


def build_sharded_model(
    cfg: ModelConfig, shard: Callable[[VLAModel], object], device: torch.device, dtype: torch.dtype
) -> VLAModel:
    """``cfg``'s model held in ``dtype``, sharded by ``shard`` (e.g. ``parallelize``), pretrained weights read per rank.

    Without ``cfg.pretrained_path`` (tiny backbones) the model is built whole, then sharded.
    """
    model = build_model(cfg, dtype=dtype, backbone_on_meta=cfg.pretrained_path is not None)
    load = pretrained_loader(model)
    shard(model)
    load(device)
    return model


def pretrained_loader(model: VLAModel) -> Callable[[torch.device], None]:
    """Call on a model built with ``backbone_on_meta`` before sharding it; call what it returns after.

    Before: the real tensors (head, action token, buffers) are kept aside and every meta
    parameter is matched to the checkpoint (a missing one raises ``ConfigError`` here, before
    any memory is taken). After: each rank allocates its shards on ``device`` and reads them in.
    A model with nothing on meta (a tiny backbone) needs nothing: the returned call does nothing.
    """
    initial = {name: tensor.detach().clone() for name, tensor in _tensors(model) if not tensor.is_meta}
    stored = [name for name, _ in _tensors(model) if name not in initial and not is_lora_parameter(name)]
    if not stored:
        return lambda device: None
    checkpoint = checkpoint_readers(model.config.pretrained_path, model, stored)

    def load(device: torch.device) -> None:
        model.to_empty(device=device)
        with torch.no_grad():
            for name, tensor in _tensors(model):
                if name in initial:
                    _fill(tensor, lambda rows, value=initial[name]: value if rows is None else value[rows])
                elif is_lora_parameter(name):
                    _init_lora(name, tensor)
                else:
                    _fill(tensor, checkpoint[name])

    return load


def checkpoint_readers(folder: str, model: VLAModel, names: list[str]) -> dict[str, Reader]:
    """A reader for each of ``names`` (backbone parameters of ``model``) from ``folder``'s safetensors.

    Keys are matched as the model's Hugging Face class names them, also when the checkpoint
    uses the names older transformers versions saved (transformers' own renaming rules).
    Raises ``ConfigError`` naming the folder and a parameter it lacks.
    """
    root = Path(folder).expanduser()
    backbone = model.backbone
    rules = _renaming_rules(type(backbone).hf_model_class.__name__, backbone.hf_config.model_type)
    base_rules = _renaming_rules(type(getattr(backbone, "model", backbone)).__name__)
    stored: dict[str, tuple[Path, str]] = {}
    for key, file in _weight_files(root).items():
        name = _rename(key, rules)
        if name.startswith("model."):
            name = "model." + _rename(name[len("model."):], base_rules)
        stored[name] = (root / file, key)
    readers, missing = {}, []
    shapes = dict(_tensors(model))
    for name in names:
        hf_name = _hf_name(type(backbone).hf_prefixes, name)
        if hf_name not in stored:
            missing.append(name)
            continue
        path, key = stored[hf_name]
        with safe_open(str(path), framework="pt") as f:
            shape = tuple(f.get_slice(key).get_shape())
        if shape != tuple(shapes[name].shape):
            raise ConfigError(f"model.pretrained_path: {path} holds {key} of shape {list(shape)}, "
                              f"but {root}/config.json makes it {list(shapes[name].shape)}")
        readers[name] = lambda rows, path=path, key=key: _read(path, key, rows)
    if missing:
        raise ConfigError(f"model.pretrained_path: {root} holds no weights for {len(missing)} parameter(s) "
                          f"of the {backbone.family} backbone, e.g. {missing[0]}")
    return readers


def load_state(model: nn.Module, file: str | Path) -> None:
    """Load ``file`` (a full state dict) into ``model`` built with its backbone on meta, tensor by tensor,
    each in the dtype the model holds it in: at most one copy of the weights, in that dtype."""
    targets = model.state_dict(keep_vars=True)
    with safe_open(str(file), framework="pt") as f:
        keys = list(f.keys())
    # A copy in memory, not views of the mapped file: re-exporting into the folder cannot change them.
    state = {key: _read(Path(file), key, None).to(targets[key].dtype, copy=True) for key in keys if key in targets}
    model.load_state_dict(state, assign=True)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _hf_name(prefixes: dict[str, str], name: str) -> str | None:
    """``backbone.model.x`` -> the Hugging Face model's ``model.x`` (None outside the backbone)."""
    if not name.startswith("backbone."):
        return None
    rest = name[len("backbone."):].replace(".base_layer.", ".")  # LoRA wraps the original linear layers
    for ours, theirs in prefixes.items():
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    return None


def _weight_files(root: Path) -> dict[str, str]:
    """Checkpoint key -> safetensors file name (sharded with an index, or one file)."""
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    single = root / "model.safetensors"
    if not single.is_file():
        raise ConfigError(f"model.pretrained_path: {root} has no model.safetensors or model.safetensors.index.json")
    with safe_open(str(single), framework="pt") as f:
        return dict.fromkeys(f.keys(), single.name)


def _renaming_rules(*names: str) -> list[tuple[re.Pattern, str]]:
    rules = []
    for name in names:
        for rule in get_checkpoint_conversion_mapping(name) or []:
            if type(rule).__name__ == "WeightRenaming":
                rules += [(re.compile(s), t) for s, t in zip(rule.source_patterns, rule.target_patterns)]
    return rules


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, target in rules:
        key = pattern.sub(target, key, count=1)
    return key


def _read(path: Path, key: str, rows: slice | None) -> torch.Tensor:
    """One tensor (or rows of it) from a safetensors file, opened just for this read: the mapped
    pages are released at once instead of accumulating in the process's memory."""
    with safe_open(str(path), framework="pt") as f:
        if rows is None:
            return f.get_tensor(key)
        return f.get_slice(key)[rows]


def _fill(tensor: torch.Tensor, read: Reader) -> None:
    """Copy this rank's rows of a (possibly FSDP-sharded) tensor from ``read``."""
    if isinstance(tensor, DTensor):
        shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        local = tensor.to_local()
        if local.numel():
            local.copy_(read(slice(offset[0], offset[0] + shape[0])))
        return
    tensor.copy_(read(None))


def _init_lora(name: str, tensor: torch.Tensor) -> None:
    """peft's initialization of LoRA adapters built on the meta device: A random, B zero (a no-op at start)."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    if "lora_B" in name:
        local.zero_()
    else:
        fan_in = tensor.shape[1]
        bound = 1 / fan_in**0.5  # kaiming_uniform_(a=sqrt(5)) on a [r, fan_in] weight
        local.uniform_(-bound, bound)
