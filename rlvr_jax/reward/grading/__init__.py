"""The answer grader's internals; `rlvr_jax.checker` is its public face.

Stages, each a module: `extract` (the final answer of a response),
`normalize` (string rewrites that never change a value), `lexer` (whitelisted
tokens), `parser` (a typed, inert tree of `nodes`), `values` (exact and
guarded numeric evaluation), `relations` (labels, solution sets), `rules`
(equivalence). Nothing here imports JAX,
and nothing derived from model text is ever executed.
"""
