"""The planner's parts: the chip table (`chips`), HLO byte and kernel-FLOP
counting (`hlo`), compiling with a cache and out-of-memory as a figure
(`compile`), the step's programs lowered from the components and priced
(`programs`), the plan's figures and table (`report`) and the fit search
(`search`). The command line and `plan(config, ...)` are `rlvr_jax.plan`.
"""
