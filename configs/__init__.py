"""Experiment configs: `get_config(arg)` files for `--config=configs/<name>.py[:arg]`.

The training configs build on `rlvr_jax.base_config`, so a config file runs
from any directory (`--config=/abs/path/configs/pi1.py`).
"""
