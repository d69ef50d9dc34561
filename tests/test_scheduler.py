"""The continuous-batching scheduler, driven without a model: rows end at
predetermined lengths, and the loop is checked against a plain simulation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.rollout import scheduler


def _replay(lengths_r, slots, refill_every):
    out = scheduler.replay(lengths_r, slots, refill_every)
    return out.tokens_r, out.started_r, out.decode_steps


def _simulate(lengths, slots):
    """Greedy list scheduling refilled every step: decode steps it takes."""
    free_at = [0] * slots  # decode step at which each slot is free again
    for length in lengths:
        s = int(np.argmin(free_at))
        free_at[s] += length - 1  # the first token needs no decode step
    return max(free_at)


@pytest.mark.parametrize("slots", [1, 3, 8])
def test_every_row_gets_its_length_and_rows_start_in_order(slots):
    rng = np.random.default_rng(slots)
    lengths = rng.integers(1, 40, 37).astype(np.int32)
    count, started, steps = _replay(jnp.asarray(lengths), slots, 1)
    np.testing.assert_array_equal(count, lengths)
    assert (np.diff(np.asarray(started)) >= 0).all()  # row order
    # Refilled every step it is exactly greedy list scheduling in row order.
    assert int(steps) == _simulate(lengths.tolist(), slots)


def test_refilling_every_k_steps_costs_at_most_k_per_row_and_no_tokens():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 64).astype(np.int32)
    every_step = int(_replay(jnp.asarray(lengths), 8, 1)[2])
    count, _, every_4 = _replay(jnp.asarray(lengths), 8, 4)
    np.testing.assert_array_equal(count, lengths)
    assert every_step <= int(every_4) <= every_step + 3 * len(lengths)


def test_continuous_beats_fixed_chunks_on_long_tailed_lengths():
    rng = np.random.default_rng(1)
    lengths = np.minimum(rng.lognormal(np.log(20), 0.9, 256), 300).astype(np.int32)
    lengths = np.maximum(lengths, 1)
    slots = 32
    steps = int(_replay(jnp.asarray(lengths), slots, 1)[2])
    chunked = sum(int(c.max()) - 1 for c in np.split(lengths, len(lengths) // slots))
    assert steps < 0.7 * chunked, (steps, chunked)


def test_bad_refill_period_is_a_value_error():
    with pytest.raises(ValueError, match="^refill_every:"):
        _replay(jnp.ones((4,), jnp.int32), 2, 0)
