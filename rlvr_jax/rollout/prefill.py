"""The prompt prefill shared by the slot and paged engines, and where their
rows go on a mesh.

`prefill` runs every prompt once through the learner's own forward; the
helpers pin arrays to the devices the slots are split over (the mesh's
batch axes).
"""

from __future__ import annotations

import math

import jax

from rlvr_jax import sharding
from rlvr_jax.model import decoder
from rlvr_jax.rollout.sampling import SamplerWeights


def prefill(
    config,
    weights: SamplerWeights,
    prompt_tokens_bt,
    prompt_mask_bt,
    settings,
    slot_sharding,
):
    """Every prompt once through the learner's forward (`decoder.hidden`):
    its keys/values (`decoder.KVCache`, left-padded [L, B, T, K, H]) and its
    last position's fp32 logits [B, V], from which all n samples of the
    prompt draw their first token.

    The prompts stay split as the slots are: with fsdp-sharded weights the
    compiler otherwise keeps the weights in place and runs every prompt on
    every chip, activations split over the model dimension (a 7B prefill
    of 128 prompts then holds whole [B, T, F] MLP activations per chip).
    """
    b, t = prompt_tokens_bt.shape
    prompt_mask_bt = prompt_mask_bt.astype(bool)
    cache = decoder.init_cache(config, b, t, settings.cache_dtype)
    x_btd, cache = decoder.hidden(
        config,
        weights.prefill,
        prompt_tokens_bt,
        decoder.positions_from_mask(prompt_mask_bt),
        prompt_mask_bt,
        cache,
        constrain=rows_constraint(slot_sharding),
    )
    return cache, decoder.head(config, weights.prefill, x_btd[:, -1:])[:, 0]


def split_like_slots(x: jax.Array, axis: int, slot_sharding) -> jax.Array:
    """`x` with `axis` split as `slot_sharding` splits the slots' (leading)
    axis; unchanged without a `NamedSharding`. An axis that does not divide
    is left to the compiler (`sharding.fit_spec`)."""
    if not isinstance(slot_sharding, jax.sharding.NamedSharding) or not len(
        slot_sharding.spec
    ):
        return x
    spec = [None] * x.ndim
    spec[axis] = slot_sharding.spec[0]
    mesh = slot_sharding.mesh
    spec = sharding.fit_spec(jax.sharding.PartitionSpec(*spec), x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def rows_constraint(slot_sharding):
    """The model's `constrain` hook pinning rows as the slots are split
    (None without a `NamedSharding`)."""
    if not isinstance(slot_sharding, jax.sharding.NamedSharding):
        return None
    return lambda x: split_like_slots(x, 0, slot_sharding)


def shards_of(sharding: jax.sharding.Sharding | None) -> int:
    """How many parts a sharding splits an array's leading axis into."""
    if sharding is None:
        return 1
    big = math.prod(sharding.mesh.shape.values()) if hasattr(sharding, "mesh") else 1
    return big // sharding.shard_shape((big,))[0]
