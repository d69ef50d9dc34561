"""Tokenizers: a local Hugging Face tokenizer, or a tiny one built in-process.

Real runs use the model directory's own tokenizer (`load`). Tests and laptop
`tiny` runs have no hub access, so `build_tiny` trains a small character-level
BPE on a built-in math corpus. It carries the Qwen2 special tokens and the
Qwen2.5-Math chat template, so prompts render exactly as they do for the real
model and the whole pipeline (template → tokens → sampler → detokenise →
checker) runs unchanged.
"""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rlvr_jax import io as io_lib

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

QWEN_MATH_SYSTEM = (
    "Please reason step by step, and put your final answer within \\boxed{}."
)

# Qwen2.5-Math's template: a user-only conversation gets the default system
# prompt. Literal strings are emitted through expressions so that Jinja's
# whitespace control never eats the newlines the format needs.
QWEN_MATH_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n"
    + QWEN_MATH_SYSTEM.replace("\\", "\\\\")
    + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

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


def build_tiny(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    """A deterministic character-level BPE with Qwen2 special tokens.

    The alphabet is printable ASCII (other characters map to `<unk>`); the
    ten answers `\\boxed{0}` … `\\boxed{9}` are single tokens, so a tiny random
    model emits a well-formed boxed answer often enough for GRPO to get a
    reward signal on the built-in task. Set the model's vocabulary to
    `len(tokenizer)`.

    Args:
      vocab_size: target vocabulary size (including specials and the boxed
        answers); at least 128.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, trainers

    if vocab_size < 128:
        raise ValueError(f"vocab_size must be >= 128, got {vocab_size}")
    specials = [ENDOFTEXT, IM_START, IM_END, "<unk>"]
    boxed = [f"\\boxed{{{d}}}" for d in range(10)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.Fuse()  # tokens are raw character runs: concatenate
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(boxed),
        special_tokens=specials,
        initial_alphabet=list(string.printable),
        limit_alphabet=len(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_tokens(boxed)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token="<unk>",
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = QWEN_MATH_CHAT_TEMPLATE
    return fast


def load(path: str) -> PreTrainedTokenizerFast:
    """The tokenizer stored in a local Hugging Face model directory."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids generation stops on: <|im_end|> and <|endoftext|> when present."""
    ids = []
    for token in (IM_END, ENDOFTEXT, tokenizer.eos_token):
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
