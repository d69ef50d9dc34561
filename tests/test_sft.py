"""The supervised warm start: batches, loss masking, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest

from rlvr_jax import base_config, io, sft
from rlvr_jax import checkpoint as ckpt_lib
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.model import decoder as model_lib


def test_batch_rows_put_the_loss_on_the_solution_and_its_stop_token():
    pairs = [([5, 6], [7, 8, 9]), ([4, 5, 6, 7], [1])]
    b = sft.make_batch(pairs, prompt_len=4, response_len=3, pad_id=0)
    np.testing.assert_array_equal(
        b["tokens"], [[0, 0, 5, 6, 7, 8, 9], [4, 5, 6, 7, 1, 0, 0]]
    )
    np.testing.assert_array_equal(b["mask"], b["tokens"] != 0)
    np.testing.assert_array_equal(
        b["loss_mask"].astype(int), [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0]]
    )


def test_encode_pairs_appends_the_stop_token_and_rejects_long_solutions():
    tok = tokenizer_lib.build_tiny()
    rows = [
        {
            "problem": "Compute 1 + 2.",
            "solution": "1 + 2 = 3. \\boxed{3}",
            "answer": "3",
        }
    ]
    ((prompt, response),) = sft.encode_pairs(tok, rows, 128, 64)
    assert response[-1] == tokenizer_lib.stop_token_ids(tok)[0]
    assert tok.decode(response[:-1]) == rows[0]["solution"]
    assert tok.decode(prompt).endswith(
        "Compute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="row 0: solution has"):
        sft.encode_pairs(tok, rows, 128, 5)


@pytest.mark.slow  # 20 s on idle cores, minutes on busy ones (8 fake devices)
def test_sft_lowers_heldout_loss_and_saves_a_loadable_checkpoint(tmp_path):
    config = base_config.apply_arg(
        base_config.lab_config(f"tiny,data={tmp_path}/data")[0], "steps=5"
    )
    # Held-out loss only (no greedy decoding to compile): seconds, not minutes.
    config.train.batch_size = 16
    config.optim.lr = 3e-3
    config.eval.every = 5
    config.eval.max_examples = 4
    config.eval.max_new_tokens = 0
    config.checkpoint.every = 5
    workdir = str(tmp_path / "sft")
    sft.run(config, workdir)
    rows = io.read_log(f"{workdir}/metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(6))
    for domain in ("arith", "linear", "fraction", "count"):
        first, last = rows[0][f"eval/{domain}/loss"], rows[-1][f"eval/{domain}/loss"]
        assert last < first - 0.3, (domain, first, last)
        assert f"eval/{domain}/acc" not in rows[-1]
    assert rows[-1]["loss/sft"] < rows[1]["loss/sft"]
    # What checkpoint.resume_from reads: the model config and the last step.
    model_config, _ = ckpt_lib.load_params(workdir)
    assert (
        model_config.d_model == model_lib.ModelConfig.lab().d_model
        and ckpt_lib.available_steps(workdir)[-1] == 5
    )
