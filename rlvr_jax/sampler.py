"""The sampler's stable import path: the rollout package face.

`rlvr_jax.sampler` is the same module object as `rlvr_jax.rollout` (not a copy), so
attributes, patches and caches are shared.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("rlvr_jax.rollout")
