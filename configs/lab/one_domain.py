"""Lab: RLVR on one domain's pool, evaluated on every domain (transfer).

`domain=D` (arith, linear, fraction, count; default arith) trains on that
domain's 16 RL-pool problems; the held-out sets of all four domains are
evaluated, so the other three measure cross-domain transfer.

  python -m rlvr_jax.main --config=configs/lab/one_domain.py:domain=arith,seed=0 \
      --workdir=/tmp/rlvr_jax_lab/arith_s0
"""

from rlvr_jax import base_config as base


def get_config(arg=None):
    c, rest = base.lab_rl_config(arg)
    domain, rest = base.pop_arg(rest, "domain", "arith")
    c.data.indices = base.lab_rl_pool((domain,))
    c.data.replicate = 0
    return base.apply_arg(c, rest)
