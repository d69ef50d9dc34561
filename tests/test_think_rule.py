"""The think rule (DeepSeek-R1-Distill): only the text after `</think>` is
graded, a response that never closes its thinking scores 0; in the checker,
the reward pool, the eval config and a training step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rlvr_jax import reward
from rlvr_jax.reward import checker

REPO = Path(__file__).resolve().parents[1]

# (response, gold, reward under the think rule, reward without it)
CASES = [
    # Closed thinking, the right box after it.
    ("Try 3: \\boxed{3}? No.</think>\n\nSo the answer is \\boxed{4}.", "4", 1.0, 1.0),
    # The right box only inside the thinking, nothing boxed after it.
    ("So \\boxed{4}.</think>\n\nDone.", "4", 0.0, 1.0),
    # Thinking never closed (cut at max_new_tokens): 0 whatever it boxed.
    ("Hmm, so \\boxed{4}", "4", 0.0, 1.0),
    # Two </think>: the text between the first and the second is graded
    # (the reference keeps piece 1 of a split on </think>) ...
    ("a</think> \\boxed{4} </think> \\boxed{5}", "4", 1.0, 0.0),
    # ... and a box after the second one is not.
    ("a</think> \\boxed{4} </think> \\boxed{5}", "5", 0.0, 1.0),
    # The model's own <think> changes nothing (the prompt usually opens it).
    ("<think>\nmaybe \\boxed{5}</think> it is \\boxed{4}", "4", 1.0, 1.0),
    # A wrong box after the thinking is wrong.
    ("\\boxed{4}</think> \\boxed{7}", "4", 0.0, 0.0),
]


def test_after_thinking_reads_between_the_first_and_second_close():
    assert checker.after_thinking("x</think>y") == "y"
    assert checker.after_thinking("x</think>y</think>z") == "y"
    assert checker.after_thinking("</think>") == ""
    assert checker.after_thinking("<think> no close") is None
    assert checker.after_thinking("") is None


@pytest.mark.parametrize("response,gold,with_rule,without", CASES)
def test_the_rule_on_hand_made_responses(response, gold, with_rule, without):
    assert checker.reward(response, gold, think=True) == with_rule
    assert checker.reward(response, gold) == without  # today's behaviour
    assert checker.score_item(response, gold, "eval", think=True)[0] == with_rule


def test_eval_mode_reads_only_after_the_thinking():
    # Lenient extraction would find the last number; under the rule the
    # number inside the thinking is out of reach.
    assert checker.score_item("It is 12.</think> Done.", "12", "eval")[0] == 1.0
    value, extracted, _ = checker.score_item(
        "It is 12.</think> Done.", "12", "eval", think=True
    )
    assert (value, extracted) == (0.0, None)
    value, extracted, _ = checker.score_item(
        "It is 11.</think> The answer is 12.", "12", "eval", think=True
    )
    assert (value, extracted) == (1.0, "12")


def test_the_rule_through_the_reward_pool():
    responses = [r for r, *_ in CASES]
    golds = [g for _, g, *_ in CASES]
    with reward.RewardPool(workers=1, timeout_s=5.0, think=True) as pool:
        on = pool.score(responses, golds)
        off = pool.score(responses, golds, think=False)
    assert on.rewards == [c[2] for c in CASES]
    assert on.unclosed == 1  # the third case only
    assert on.extracted[0] == "4" and on.extracted[2] is None
    assert on.extracted[3] == "4"  # between the two </think>
    assert off.rewards == [c[3] for c in CASES] and off.unclosed == 0
    assert on.timeouts == on.errors == 0


# ------------------------------------------------------------ eval config
def _train_config(name, arg=None):
    spec = importlib.util.spec_from_file_location(name[:-3], REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _r1_config(arg=None):
    return _train_config("r1_distill_eval.py", arg)


def test_r1_distill_eval_config_is_rllms_protocol():
    from rlvr_jax.data import paper_data
    from rlvr_jax.data import tasks as tasks_lib

    c = _r1_config()
    assert c.sampling.max_new_tokens == 8192
    assert _r1_config("32k").sampling.max_new_tokens == 32768
    assert (c.score.think, c.score.mode) == (True, "boxed")
    assert c.template == "qwen25-math-cot-step"
    c.data.dir, c.data.limit = paper_data.eval_dir(), 1
    protocols = {t.benchmark.name: t.protocol for t in tasks_lib.load_tasks(c)}
    assert {k: p.n for k, p in protocols.items()} == {
        "math500": 16,
        "aime24": 64,
        "aime25": 64,
        "amc23": 64,
        "minerva_math": 16,
        "olympiadbench": 16,
    }
    assert {(p.temperature, p.top_p) for p in protocols.values()} == {(0.6, 0.95)}
    tiny = _r1_config("tiny")
    assert tiny.sampling.max_new_tokens == 8 and tiny.score.think
    with pytest.raises(ValueError, match="unknown r1_distill_eval argument '16k'"):
        _r1_config("16k")


# --------------------------------------------------------------- training
@pytest.mark.slow  # ~20 s: a tiny R1 run; the rule itself is tested above
def test_one_training_step_with_the_rule_logs_the_closed_rate(tmp_path, monkeypatch):
    """R1's tiny config: every other response gets a `</think>` in front, so
    at least half close their thinking (the random model may close others
    itself, its tokenizer has the token); the rate counts exactly those."""
    from rlvr_jax import io as io_lib
    from rlvr_jax import train
    from rlvr_jax.data import tokenizer as tokenizer_lib

    decode = tokenizer_lib.decode_responses
    graded = []

    def half_closed(tokenizer, roll):
        texts = decode(tokenizer, roll)
        texts = [("</think>" + t) if i % 2 else t for i, t in enumerate(texts)]
        graded.extend(texts)
        return texts

    monkeypatch.setattr(tokenizer_lib, "decode_responses", half_closed)
    c = _train_config("r1_distill.py", "tiny,steps=1")  # R1's tiny chat format
    assert c.reward.think and c.model.tiny_chat == "r1"
    c.eval.path = ""  # no evaluation: one sampling and one update
    c.log.tensorboard = False
    train.run(c, str(tmp_path / "run"))
    (row,) = [
        r
        for r in io_lib.read_log(str(tmp_path / "run" / "metrics.jsonl"))
        if "reward/mean" in r
    ]
    closed = sum("</think>" in t for t in graded)
    assert closed >= len(graded) // 2
    assert row["reward/think_closed_rate"] == closed / len(graded)
    assert row["reward/mean"] <= closed / len(graded)


def test_a_tokenizer_that_drops_the_close_is_refused():
    from rlvr_jax import train
    from rlvr_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.build_tiny()
    train.check_think_decodes(tok)  # characters: "</think>" survives
    tok.add_special_tokens({"additional_special_tokens": ["</think>"]})
    with pytest.raises(ValueError, match="every reward would be 0"):
        train.check_think_decodes(tok)
