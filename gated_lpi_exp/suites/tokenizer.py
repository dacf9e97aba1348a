"""A byte-level BPE tokenizer trained on the corpus, in which every object is one token after a space.

Pre-tokenization is GPT-2's split (words keep their leading space), except that an object that is not a
single word (``"New Delhi"``, ``"middle-aged"``) is kept whole. After BPE training, any object that is still
several tokens gets merges appended (lowest priority, so nothing learned earlier changes) until
``" " + object`` is one token. :func:`check_single_token_objects` then proves the property the analysis
relies on: ``ids(prompt + " " + object) == ids(prompt) + [one id]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gated_lpi_exp.errors import ConfigurationError

PAD, EOS = "<pad>", "<eos>"
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_ONE_WORD = re.compile(r"^[^\W\d_]+$|^\d+$")


def train_tokenizer(texts: Iterable[str], objects: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts`` and make every ``" " + object`` a single token.

    Args:
        texts: Training text, one sentence per item.
        objects: Every object that must be one token when it follows a prompt and a space.
        vocab_size: Target vocabulary size of BPE training (objects' merges may add a few entries).

    Returns:
        A fast tokenizer that adds no special tokens, with ``<pad>`` and ``<eos>`` set.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(objects)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok = _merge_objects(tok, sorted(set(objects)))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, clean_up_tokenization_spaces=False
    )


def _pre_tokenizer(objects: Sequence[str]) -> pre_tokenizers.PreTokenizer:
    multi = sorted({o for o in objects if not _ONE_WORD.match(o)}, key=lambda o: (-len(o), o))
    pattern = _GPT2_SPLIT
    if multi:
        whole = "|".join(re.escape(o) for o in multi)
        pattern = rf" ?(?:{whole})(?![\p{{L}}\p{{N}}])|" + pattern
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _merge_objects(tok: Tokenizer, objects: Sequence[str]) -> Tokenizer:
    """Append merges so that each ``" " + object`` ends as one token (one object at a time)."""
    for obj in objects:
        pieces = tok.encode(" " + obj, add_special_tokens=False).tokens
        if len(pieces) == 1:
            continue
        state = json.loads(tok.to_str())
        vocab, merges = state["model"]["vocab"], state["model"]["merges"]
        left = pieces[0]
        for right in pieces[1:]:
            merges.append([left, right])
            left = left + right
            vocab.setdefault(left, len(vocab))
        tok = Tokenizer.from_str(json.dumps(state))
    return tok


def check_single_token_objects(
    tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], objects: Sequence[str]
) -> None:
    """Check that each object is exactly one token after its prompt, and the prompt's ids are a prefix.

    Raises:
        ConfigurationError: naming up to ten offending (prompt, object) pairs.
    """
    bad = []
    for prompt, obj in zip(prompts, objects, strict=True):
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + " " + obj, add_special_tokens=False)["input_ids"]
        if len(full) != len(head) + 1 or full[: len(head)] != head:
            bad.append((prompt, obj, tokenizer.convert_ids_to_tokens(full[len(head) - 1 :])))
    if bad:
        shown = "; ".join(f"{p!r} + {o!r} -> tail {t}" for p, o, t in bad[:10])
        raise ConfigurationError(
            f"{len(bad)} object(s) are not a single token after their prompt: {shown}. The suite's tokenizer "
            "must make every object one token; check the relation data (objects, templates) and vocab_size."
        )
