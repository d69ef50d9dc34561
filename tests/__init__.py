"""rlvr_jax test suite (CPU only)."""
