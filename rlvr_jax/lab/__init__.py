"""The laptop lab: synthetic task families with exact answers (`synthetic`)
and the lab report over many runs (`report`, `python -m rlvr_jax.lab`)."""
