"""The sampler: settings and token choice, the continuous batching engines
(slot caches or a paged KV cache), the decode step and the schedulers.

This package face is the stable sampler API (`rlvr_jax.sampler` is the same
module): `generate`, `rollout`, `continuous`, `sample`, `SamplingSettings`,
`Rollout`. The parts:

  sampling.py   settings, token choice, prompt padding, result types, `prepare`
  engine.py     continuous batching over decode slots; `rollout`, `generate`,
                and `lower` (the programs a rollout compiles)
  paged_engine.py  the same over a paged KV cache (`Paging`): rows in flight
                bounded by their real tokens, preemption when pages run dry
  prefill.py    the prompt prefill both engines share; where rows go on a mesh
  static.py     the static-batch reference sampler (tests, benchmarks)
  decoding.py   one-token decode step over packed weights, slot caches or pages
  scheduler.py  which slot takes which row, when
  pagebook.py   which slot takes which row and which pages, when
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
from rlvr_jax.rollout.paged_engine import Paging
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
