"""The answer grader's internals; `rlvr_jax.checker` is its public face.

Stages, each a module: `extract` (the final answer of a response),
`normalize` (string rewrites that never change a value), `lexer` (whitelisted
tokens), `parser` (a typed, inert tree of `nodes`), `values` (exact and
guarded numeric evaluation, exact equality), `relations` (labels, which
answers may be sets), `sets` (sets of reals in sympy, built from the trees;
imported only when an answer may be a set), `rules` (equivalence). Nothing
here imports JAX, and nothing derived from model text is ever executed or
handed to a parser of text.
"""
