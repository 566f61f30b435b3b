"""The backbone's tokenizer: from a local pretrained directory, or a tiny one built offline.

Instructions are right-padded everywhere (training windows, offline evaluation, the policy):
``vla.data.transforms.Tokenize`` asks for it on every call, and the copies saved with a run
say so too. ``vla.model.sequence.assemble`` does not rely on it: it moves the real tokens to
the front of any 0/1 mask, so the tokens before ``[LRN]`` are the instruction whatever a
tokenizer's ``padding_side`` (LLaVA-1.5 and Qwen2-VL publish ``left``).
"""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vla.model.config import ModelConfig

TINY_VOCAB_SIZE = 384
_SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}

# Words of robot instructions; byte-level BPE still encodes any other text.
_CORPUS = [
    "pick up the red block", "pick up the green block", "pick up the blue block",
    "pick up the yellow block", "push the block to the left", "push the block to the right",
    "open the drawer", "close the drawer", "turn on the light", "turn off the led",
    "lift the pink block from the table", "place it in the slider", "rotate the block",
    "move the slider to the left", "stack the blocks", "go to the purple block",
]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer trained on a small instruction corpus (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=_SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(_SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **_SPECIALS)


def build_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg``'s backbone; ``save_pretrained(dir)`` gives the data pipeline its copy."""
    if cfg.pretrained_path is None:
        return build_tiny_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(cfg.pretrained_path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # saved with the run and its export: instruction ids start at 0
    return tokenizer
