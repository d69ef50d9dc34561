"""Builders for tiny random Hugging Face Qwen2 and Llama checkpoints used as
references.

Weights are drawn with a larger spread than HF's default init so that logits
differ meaningfully between tokens and parity tests can fail.
"""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


# A tiny Llama 3: no attention biases, llama3 RoPE scaling over an original
# context of 16 positions (so rows of a few dozen tokens reach the scaled
# band), tied head, GQA.
LLAMA_TINY = dict(
    TINY,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
)

_FAMILIES = {
    "qwen2": (TINY, Qwen2Config, Qwen2ForCausalLM),
    "llama": (LLAMA_TINY, LlamaConfig, LlamaForCausalLM),
}


def make_model(seed: int = 0, family: str = "qwen2", **overrides):
    """A random fp32 Qwen2ForCausalLM (or LlamaForCausalLM) in eval mode,
    eager attention."""
    base, config_cls, model_cls = _FAMILIES[family]
    cfg = {**base, **overrides}
    torch.manual_seed(seed)
    config = config_cls(**cfg, attn_implementation="eager")
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def make_checkpoint(path, seed: int = 0, family: str = "qwen2", **overrides) -> str:
    """Saves a random model with `save_pretrained` and returns the directory."""
    make_model(seed, family, **overrides).save_pretrained(str(path))
    return str(path)


def load_reference(path):
    """The checkpoint at `path` in transformers (its own class), fp32, eager."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation="eager", dtype=torch.float32
    ).eval()


def hf_logits(model, tokens, mask):
    """HF logits [B, T, V] with positions counted from each row's first token."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    mask = torch.as_tensor(mask, dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions)
    return out.logits.float().numpy()


def make_qwen_style_model_dir(path) -> str:
    """A small random Qwen2 with a Qwen-style tokenizer saved beside it.

    The tokenizer has the Qwen2 special tokens and the Qwen2.5-Math chat
    template (`rlvr_jax.data.tokenizer.build_tiny`), and the context (2048) holds
    the paper's prompt buckets, so the paper's configs run on it unchanged
    but for sizes.
    """
    from rlvr_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.build_tiny(vocab_size=256)
    make_checkpoint(path, vocab_size=len(tok), max_position_embeddings=2048)
    tok.save_pretrained(str(path))
    return str(path)


# Sizes that shrink the paper's π1 config to seconds on a CPU.
PI1_CPU_SIZES = {
    "model.dtype": "float32",  # CPUs are slow at bf16 matmuls
    "data.replicate": 4,
    "train.batch_size": 4,
    "train.micro_batch_size": 8,
    "train.steps": 1,
    "rollout.n": 2,
    "rollout.max_new_tokens": 4,
    "rollout.chunk_size": 8,
    "eval.max_examples": 2,
    "eval.max_new_tokens": 4,
    "log.checker_workers": 2,
}


def set_keys(config, overrides: dict) -> None:
    """Sets dotted keys ("train.steps") of a ConfigDict, as --config.x=y does."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
