"""Forward throughput of the JAX Qwen2 vs transformers' PyTorch Qwen2 on this CPU.

Both models hold the same random weights (written once with `save_pretrained`
and read back through `rlvr_jax.params.load_hf`), run in fp32 on the same
batch, and are timed in this one process. Prints tokens/s for each and the
ratio JAX / PyTorch.

    python -m benchmarks.forward                 # Qwen2.5-0.5B shape
    python -m benchmarks.forward --layers 4      # a quicker, shallower variant
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr_jax.model import decoder as M
from rlvr_jax.model import params as PR


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--layers", type=int, default=None, help="cut the depth")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    shape = M.ModelConfig.qwen2_5_0_5b(dtype="float32")
    if args.layers:
        shape = shape.replace(n_layers=args.layers)
    hf_config = Qwen2Config(**shape.to_hf(), attn_implementation="sdpa")
    torch.manual_seed(0)
    ref = Qwen2ForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        config, params = PR.load_hf(tmp, np.float32, compute_dtype="float32")

    tokens = np.random.default_rng(0).integers(
        0, config.vocab_size, (args.batch, args.seq)
    )
    n_tokens = args.batch * args.seq
    jax_forward = jax.jit(lambda p, t: M.forward(config, p, t))
    t_jax = _best_of(
        lambda: jax_forward(params, tokens).block_until_ready(), args.repeats
    )
    tokens_pt = torch.as_tensor(tokens)

    def torch_forward():
        with torch.inference_mode():
            ref(input_ids=tokens_pt).logits.sum().item()

    t_pt = _best_of(torch_forward, args.repeats)
    print(
        f"shape: Qwen2.5-0.5B layers={config.n_layers} batch={args.batch} "
        f"seq={args.seq} fp32, torch threads={torch.get_num_threads()}"
    )
    print(f"jax   : {n_tokens / t_jax:10.1f} tokens/s ({t_jax * 1e3:.1f} ms)")
    print(f"torch : {n_tokens / t_pt:10.1f} tokens/s ({t_pt * 1e3:.1f} ms)")
    print(f"ratio jax/torch: {t_pt / t_jax:.2f}x")


if __name__ == "__main__":
    main()
