"""Hugging Face folders built from the files really published for each family (tests/fixtures/hf-published).

``build_published_folder(family, directory)`` writes what a user's downloaded checkpoint folder
holds, cut down for speed: the published ``config.json`` with 1-2 layers and 32-wide layers
(every other field kept), random weights saved with ``save_pretrained``, and the published
tokenizer / preprocessor / generation files beside. See tests/fixtures/hf-published/README.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vla.model.backbones import BACKBONES
from vla.model.tokenizer import _CORPUS

PUBLISHED = Path(__file__).resolve().parents[1] / "fixtures" / "hf-published"
FAMILIES = ("paligemma", "kosmos2", "llava", "qwen2vl", "qwen2_5_vl", "smolvlm2", "paligemma2")
# Families published without a tokenizer of their own here: Qwen2.5-VL's is Qwen2's (in qwen2vl/).
TOKENIZER_FOLDER = {"qwen2vl": "qwen2vl", "qwen2_5_vl": "qwen2vl"}

# What each published tokenizer says (tokenizer_config.json / special_tokens_map.json / added_tokens.json,
# or for Gemma, whose files are not redistributable, the ids PaliGemma's config.json names).
PADDING_SIDE = {"paligemma": "right", "kosmos2": "right", "llava": "left", "qwen2vl": "left", "qwen2_5_vl": "left",
                "smolvlm2": "right", "paligemma2": "right"}
SPECIAL_IDS = {  # bos, eos, pad as the model must use them
    "paligemma": (2, 1, 0),
    "kosmos2": (0, 2, 1),
    "llava": (1, 2, 32001),
    "qwen2vl": (151643, 151645, 151643),
    "qwen2_5_vl": (151643, 151645, 151643),  # the config has no pad id: the tokenizer's <|endoftext|>
    "smolvlm2": (1, 2, 2),  # the Llama text config's <|im_start|> / <|im_end|>; its pad_token_id 2
    "paligemma2": (2, 1, 0),
}
_GEMMA = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
# Our small stand-ins for the unpublished tokenizers: the same special tokens at the same ids.
_SMALL_VOCABS = {
    "paligemma": _GEMMA,
    "paligemma2": _GEMMA | {"<image>": 257152},  # the image_token_index of its config
    # SmolVLM2 (the README's ids; <global-img> and <fake_token_around_image> where SmolVLM2's vocabulary has them)
    "smolvlm2": {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<global-img>": 49152,
                 "<fake_token_around_image>": 49189, "<image>": 49190, "<end_of_utterance>": 49279},
    "kosmos2": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 64001},
    "llava": {"<unk>": 0, "<s>": 1, "</s>": 2},
}
WIDTH = 32


def _shrink(family: str, config: dict) -> dict:
    """The published config cut to 1-2 layers of width 32; every other field is kept."""
    small = {"hidden_size": WIDTH, "intermediate_size": 2 * WIDTH, "num_attention_heads": 2}
    if family == "paligemma":
        config["text_config"] |= small | {"num_hidden_layers": 1, "num_key_value_heads": 1, "head_dim": WIDTH // 2}
        config["vision_config"] |= small | {"num_hidden_layers": 1, "projection_dim": WIDTH}
        config |= {"hidden_size": WIDTH, "projection_dim": WIDTH}
    elif family == "kosmos2":
        config["text_config"] |= {"embed_dim": WIDTH, "ffn_dim": 2 * WIDTH, "layers": 1, "attention_heads": 2}
        config["vision_config"] |= small | {"num_hidden_layers": 1}
    elif family == "llava":
        config["text_config"] |= small | {"num_hidden_layers": 1, "num_key_value_heads": 2}
        config["vision_config"] |= small | {"num_hidden_layers": 2, "projection_dim": WIDTH}  # reads layer -2
    elif family in ("qwen2vl", "qwen2_5_vl"):
        config |= small | {"num_hidden_layers": 1, "num_key_value_heads": 1, "max_window_layers": 1}
        config["rope_scaling"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2 = 8
        if family == "qwen2vl":
            config["vision_config"] |= {"depth": 1, "embed_dim": WIDTH, "num_heads": 2, "hidden_size": WIDTH}
        else:  # a windowed block, then a full-attention one (published: full at 7, 15, 23, 31 of 32)
            config["vision_config"] |= {"depth": 2, "hidden_size": WIDTH, "intermediate_size": 2 * WIDTH,
                                        "num_heads": 2, "out_hidden_size": WIDTH, "fullatt_block_indexes": [1]}
    elif family == "smolvlm2":
        config["text_config"] |= small | {"num_hidden_layers": 1, "num_key_value_heads": 1, "head_dim": WIDTH // 2}
        config["vision_config"] |= small | {"num_hidden_layers": 1}
    elif family == "paligemma2":
        config["text_config"] |= small | {"num_hidden_layers": 2, "num_key_value_heads": 1, "head_dim": WIDTH // 2}
        config["vision_config"] |= small | {"num_hidden_layers": 1, "projection_dim": WIDTH}
        config |= {"hidden_size": WIDTH, "projection_dim": WIDTH}
    return config


def _small_tokenizer(specials: dict[str, int]) -> Tokenizer:
    """A byte-level BPE on the instruction corpus whose special tokens sit at ``specials``' ids
    (unused filler entries keep the ids in between)."""
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learner.train_from_iterator(_CORPUS * 4, trainer=trainer)
    model = json.loads(learner.to_str())["model"]
    taken = set(specials.values())
    free = (i for i in range(10**7) if i not in taken)
    vocab = dict(specials)
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab[token] = next(free)
    used = set(vocab.values())
    for i in range(max(specials.values()) + 1):
        if i not in used:
            vocab[f"<unused{i}>"] = i
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials))
    return tokenizer


def _copy_present(source: Path, directory: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (source / name).is_file():
            shutil.copy(source / name, directory / name)


def write_tokenizer(family: str, source: Path, directory: Path) -> None:
    if family in TOKENIZER_FOLDER:  # the real tokenizer is published
        _copy_present(PUBLISHED / TOKENIZER_FOLDER[family], directory, ("vocab.json", "merges.txt", "tokenizer_config.json"))
        return
    added_file = source / "added_tokens.json"
    added = json.loads(added_file.read_text()) if added_file.is_file() else {}
    tokenizer = _small_tokenizer(_SMALL_VOCABS[family] | added)
    if (source / "tokenizer_config.json").is_file():  # the published config drives the loaded tokenizer
        tokenizer.save(str(directory / "tokenizer.json"))
        _copy_present(source, directory, ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"))
        return
    # Gemma: no tokenizer files are published; its special tokens and the default right padding.
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                      pad_token="<pad>", unk_token="<unk>", padding_side=PADDING_SIDE[family])
    wrapped.save_pretrained(str(directory))
    _copy_present(source, directory, ("added_tokens.json",))


def build_published_folder(family: str, directory: Path, seed: int = 0) -> Path:
    """A checkpoint folder of ``family`` as published, cut down, with random weights."""
    source = PUBLISHED / family
    directory.mkdir(parents=True, exist_ok=True)
    hf_class = BACKBONES[family].hf_model_class
    config = hf_class.config_class.from_dict(_shrink(family, json.loads((source / "config.json").read_text())))
    torch.manual_seed(seed)
    hf_class(config).save_pretrained(str(directory))
    _copy_present(source, directory, ("preprocessor_config.json", "processor_config.json", "generation_config.json"))
    write_tokenizer(family, source, directory)
    return directory
