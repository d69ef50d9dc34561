"""The HF weight map's stable import path: `rlvr_jax.model.params`.

`rlvr_jax.params` is the same module object as `rlvr_jax.model.params` (not a copy), so
attributes, patches and caches are shared.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("rlvr_jax.model.params")
