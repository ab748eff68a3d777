"""Tiny tokenizers trained on the fly (CLIP BPE, T5 Unigram, Qwen byte-level BPE), no downloads.

They load in transformers 5 from vocabulary + merges (merges must be tuples) and round-trip through
`save_pretrained` / `from_pretrained` like the real ones. Training is deterministic for a fixed
corpus, so tiny builds are reproducible byte for byte.
"""

import itertools
import json
import string

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer, Qwen2Tokenizer, T5Tokenizer

from rewards.vlm import QWEN_SPECIAL_TOKENS

_SUBJECTS = ("cat", "dog", "hat", "car", "tree", "house", "person", "sky", "mountain", "water")
_ACTIONS = ("add a", "remove the", "replace the", "make the", "turn the", "change the")
_ATTRIBUTES = ("red", "blue", "green", "snowy", "at night", "into a painting", "bigger", "smiling")


def instruction_corpus() -> list[str]:
    """A few hundred instruction-like strings, always the same (the tokenizers' training text)."""
    return [
        f"{action} {subject} {attribute}"
        for action, subject, attribute in itertools.product(_ACTIONS, _SUBJECTS, _ATTRIBUTES)
    ]


def _vocab_and_merges(
    tokenizer: Tokenizer, special_tokens: list[str], extra_symbols: tuple[str, ...] = ()
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The trained BPE's vocabulary, renumbered canonically, and its merges.

    The trainer's merges are reproducible but the ids it gives single symbols follow a hash map's
    order, which changes from process to process; renumbering (special tokens, then single symbols
    sorted, then merge results in merge order) makes the saved tokenizer identical on every build.
    """
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(pair) for pair in model["merges"]]
    merged = [left + right for left, right in merges]
    singles = sorted((set(model["vocab"]) | set(extra_symbols)) - set(special_tokens) - set(merged))
    ordered = [*special_tokens, *singles, *dict.fromkeys(merged)]
    return {token: index for index, token in enumerate(ordered)}, merges


def tiny_clip_tokenizer(vocab_size: int = 300) -> CLIPTokenizer:
    """A CLIP-style BPE tokenizer (`</w>` word ends, every printable ASCII character known)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=list(string.printable.strip()),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(instruction_corpus(), trainer)
    # Every printable character also as a word end, so no ASCII text falls back to <|endoftext|>.
    word_ends = tuple(f"{char}</w>" for char in string.printable.strip())
    vocab, merges = _vocab_and_merges(tokenizer, ["<|startoftext|>", "<|endoftext|>"], word_ends)
    # model_max_length is what the pipelines pad and truncate to (CLIP's 77 positions).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_t5_tokenizer(vocab_size: int = 200) -> T5Tokenizer:
    """A T5-style Unigram tokenizer with `<pad>`=0, `</s>`=1, `<unk>`=2, as in T5."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    tokenizer.train_from_iterator(instruction_corpus(), trainer)
    trained = json.loads(tokenizer.to_str())["model"]["vocab"]
    # Unigram training sums floats in a varying order and lists pieces in a varying order: keep
    # the special tokens first and sort the rest by (rounded score, piece) for identical builds.
    specials = [(piece, 0.0) for piece, _ in trained[:3]]
    pieces = sorted(
        ((piece, round(score, 4)) for piece, score in trained[3:]),
        key=lambda item: (-item[1], item[0]),
    )
    vocab = specials + pieces
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_qwen_tokenizer(vocab_size: int = 400) -> Qwen2Tokenizer:
    """A Qwen2-style byte-level BPE tokenizer with Qwen's chat and vision special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(instruction_corpus(), trainer)
    vocab, merges = _vocab_and_merges(tokenizer, list(QWEN_SPECIAL_TOKENS))
    qwen = Qwen2Tokenizer(vocab=vocab, merges=merges)
    qwen.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    return qwen
