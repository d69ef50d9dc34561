"""Data: training pools and prompts (`examples`), tokenizers, the evaluation
suites (`suites`: the benchmark registry; `tasks`: loading them), TFDS
builders and the packaged paper data (`paper_data`). JAX-free."""
