"""The model: one decoder for the Qwen2 family, its HF weight map and its
attention kernels.

This package face holds the stable model API (`rlvr_jax.model.forward`,
`ModelConfig`, `init_params`); the parts:

  decoder.py  the decoder (GQA, RoPE, SwiGLU, KV cache, scanned layers, remat)
  params.py   Hugging Face safetensors in and out (`rlvr_jax.params`)
  flash.py    the learner's attention through the TPU Pallas flash kernel
  paged.py    decode attention over a paged KV cache (pure JAX, and the TPU
              Pallas paged-attention kernel)
"""

from rlvr_jax.model.decoder import (
    ATTENTION_KERNELS,
    KVCache,
    ModelConfig,
    abstract_params,
    count_params,
    forward,
    head,
    hidden,
    init_cache,
    init_params,
    positions_from_mask,
)
