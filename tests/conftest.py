"""Shared fixtures: tiny random Qwen2 checkpoints built with `transformers`.

No test downloads anything: checkpoints are created with `save_pretrained` in
a temporary directory and read back through the real loading path.
"""

from __future__ import annotations

import os

# Deterministic CPU numerics for every test; must precede the first jax import.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Eight fake CPU devices so mesh/sharding tests run on one machine; plain
# computations still run on device 0.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest  # noqa: E402

from tests import hf_fixtures  # noqa: E402


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """A tied-embedding GQA Qwen2 checkpoint directory (fp32)."""
    return hf_fixtures.make_checkpoint(tmp_path_factory.mktemp("hf_tiny"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Qwen2 HF directory with the tiny tokenizer saved in it."""
    from rlvr_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.build_tiny()
    path = tmp_path_factory.mktemp("tiny_hf")
    hf_fixtures.make_checkpoint(path, vocab_size=len(tok), max_position_embeddings=4096)
    tok.save_pretrained(str(path))
    return str(path)
