"""Evaluation's host side: results tables (`results`), response analysis
(`analysis`), plots (`plot`), example selection (`select`) and reading one
problem's responses (`show`). JAX-free; the
benchmark sweep itself is `rlvr_jax.evaluate`."""
