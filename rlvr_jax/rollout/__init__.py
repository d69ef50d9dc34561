"""The sampler: settings and token choice, the continuous batching engine,
the decode step and the slot scheduler.

This package face is the stable sampler API (`rlvr_jax.sampler` is the same
module): `generate`, `rollout`, `continuous`, `sample`, `SamplingSettings`,
`Rollout`. The parts:

  sampling.py   settings, token choice, prompt padding, result types, `prepare`
  engine.py     continuous batching over decode slots; `rollout`, `generate`,
                and `lower` (the programs a rollout compiles)
  static.py     the static-batch reference sampler (tests, benchmarks)
  decoding.py   one-token decode step over packed weights and slot caches
  scheduler.py  which slot takes which row, when
"""

from rlvr_jax.rollout.engine import (
    ATTENTION_BLOCK,
    RolloutShape,
    continuous,
    generate,
    lower_decode_step,
    lower_rollout,
    rollout,
    rollout_in_calls,
    rollout_shape,
)
from rlvr_jax.rollout.sampling import (
    Rollout,
    SamplerWeights,
    Samples,
    SamplingSettings,
    abstract_weights,
    bucket_width,
    compute_dtype_params,
    decode_weights_dtype,
    lower_prepare,
    pad_prompts,
    prepare,
)
from rlvr_jax.rollout.static import sample
