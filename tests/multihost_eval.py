"""Greedy evaluation rollouts of the tiny model, one process of a multi-host run.

    python -m tests.multihost_eval OUT.npz [ADDRESS NUM_PROCESSES PROCESS_ID]

Runs `train.rollout` (the sampler path of in-training evaluation) on the
`configs/pi1.py:tiny` model over all devices of all processes; process 0
writes the gathered tokens, log-probs and lengths to OUT.npz. Used by
tests/test_multihost.py to compare a 2-process run with a 1-device run.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

# Prompts of different lengths; 7 of them in chunks of 4 rows, so the last
# chunk is padded to split over the devices.
PROBLEMS = [
    f"What is {a} + {b}?" + " Think." * (a % 3)
    for a, b in [(3, 4), (12, 5), (7, 7), (1, 20), (9, 0), (15, 15), (2, 8)]
]


def main(argv) -> None:
    out = argv[1]
    if len(argv) > 2:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(argv[2], int(argv[3]), int(argv[4]))
    from configs import pi1
    from rlvr_jax import model as model_lib
    from rlvr_jax import sampler as sampler_lib
    from rlvr_jax import sharding as sharding_lib
    from rlvr_jax import train

    config = pi1.get_config("tiny")
    mesh = sharding_lib.make_mesh()
    tokenizer, model_config, _ = train._tokenizer_and_model_config(config)
    shardings = sharding_lib.tree_shardings(
        model_lib.abstract_params(model_config), mesh
    )
    params = train._initial_params(config, model_config, "", shardings)
    settings = sampler_lib.SamplingSettings(
        max_new_tokens=16,
        temperature=0.0,
        eos_ids=model_config.eos_token_ids,
        cache_dtype="float32",
    )
    prompts = [tokenizer(p)["input_ids"] for p in PROBLEMS]
    roll = train.rollout(
        model_config,
        params,
        prompts,
        settings,
        jax.random.key(0),
        buckets=config.data.prompt_buckets,
        chunk_rows=4,
        mesh=mesh,
    )
    if jax.process_index() == 0:
        np.savez(out, **roll)


if __name__ == "__main__":
    main(sys.argv)
