"""Evaluation's host side: results tables (`results`), response analysis
(`analysis`), plots (`plot`) and example selection (`select`). JAX-free; the
benchmark sweep itself is `rlvr_jax.evaluate`."""
