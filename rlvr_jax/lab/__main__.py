"""`python -m rlvr_jax.lab`: the lab report (see `rlvr_jax.lab.report`)."""

from rlvr_jax.lab import report

if __name__ == "__main__":
    report.cli()
