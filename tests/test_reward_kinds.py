"""Reward kinds: the paper's verifiable reward and the controls of "Spurious
Rewards" (format only, random, correct-or-format); `checker.well_formed`;
the kinds through the reward pool, the config checks, the samples log and
one training step."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import types
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax import reward
from rlvr_jax.reward import checker

REPO = Path(__file__).resolve().parents[1]

# (response, think, well formed, right for the gold "4")
CASES = [
    ("So the sum is \\boxed{4}.", False, True, True),
    ("So the sum is \\boxed{5}.", False, True, False),  # well formed, wrong
    ("\\fbox{4}", False, True, True),
    ("So the sum is \\boxed{4", False, False, False),  # unclosed
    ("So the sum is \\boxed{}.", False, False, False),  # empty
    ("So the sum is \\boxed{  }.", False, False, False),  # blank
    ("The answer is 4.", False, False, False),  # no box (eval mode would grade it)
    # A closed box earlier does not make up for an unclosed last one.
    ("First \\boxed{4}, then \\boxed{4", False, False, False),
    # The think rule: only a box after </think> counts ...
    ("So \\boxed{4}.</think> Done.", True, False, False),
    ("So \\boxed{4}.</think> Done.", False, True, True),
    # ... a response that never closes its thinking has none ...
    ("Hmm, \\boxed{4}", True, False, False),
    # ... and one after the thinking is graded as usual.
    ("Maybe 4.</think> It is \\boxed{5}.", True, True, False),
    ("Maybe 5.</think> It is \\boxed{4}.", True, True, True),
]


@pytest.mark.parametrize("response,think,formed,right", CASES)
def test_well_formed_on_hand_made_responses(response, think, formed, right):
    assert checker.well_formed(response, think=think) is formed
    value, extracted, error = checker.score_item(response, "4", think=think)
    assert value == (1.0 if right else 0.0) and not error
    # The reward extracts an answer from exactly the well-formed responses.
    assert (extracted is not None) is formed


def test_kinds_pay_what_their_definitions_say():
    correct = [True, False, False]
    formed = [True, True, False]  # right; well formed but wrong; neither

    def pay(kind, **kw):
        return reward.RewardKind(kind, **kw).rewards(correct, formed)

    assert pay("correct") == [1.0, 0.0, 0.0]
    assert pay("format") == [1.0, 1.0, 0.0]
    assert pay("correct_or_format") == [1.0, 0.5, 0.0]  # format_value 0.5
    assert pay("correct_or_format", format_value=0.2) == [1.0, 0.2, 0.0]
    assert pay("correct_or_format", format_value=0.0) == [1.0, 0.0, 0.0]
    assert pay("random", random_p=0.0) == [0.0, 0.0, 0.0]
    assert pay("random", random_p=1.0) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"kind": "spurious"}, "reward kind must be one of"),
        ({"kind": "random", "random_p": 1.5}, r"random_p=1.5 must be in \[0, 1\]"),
        ({"random_p": -0.1}, r"random_p=-0.1 must be in \[0, 1\]"),
        ({"format_value": math.nan}, r"format_value=nan must be in \[0, 1\]"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
    ],
)
def test_reward_kind_refuses_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        reward.RewardKind(**kw)


# -------------------------------------------------------------------- random
def test_random_draws_are_a_function_of_seed_step_and_global_row():
    rows = range(64)
    first = reward.random_rewards(3, 7, rows, 0.5)
    # The global `random` and numpy states play no part.
    random.seed(1)
    np.random.seed(1)
    assert reward.random_rewards(3, 7, rows, 0.5) == first
    # Two processes, each scoring half the step from its row offset, draw
    # what one process scoring all of it draws.
    kind = reward.RewardKind("random", seed=3)
    flags = [False] * 64  # blind to the grades
    whole = kind.rewards(flags, flags, step=7)
    halves = kind.rewards(flags[:40], flags[:40], step=7) + kind.rewards(
        flags[40:], [True] * 24, step=7, row_offset=40
    )
    assert whole == halves == first
    # Any row asked alone draws the same value.
    assert [reward.random_rewards(3, 7, [r], 0.5)[0] for r in (0, 41, 63)] == [
        first[0],
        first[41],
        first[63],
    ]
    # Another seed or another step draws otherwise (64 equal coin flips by
    # chance: 2^-64).
    assert reward.random_rewards(4, 7, rows, 0.5) != first
    assert reward.random_rewards(3, 8, rows, 0.5) != first
    assert 0 < sum(first) < 64


def test_random_rewards_have_mean_p():
    # 4,000 draws of Bernoulli(0.3): standard error 0.0072; 0.03 is 4 of them,
    # so a draw biased by 0.05 (or one that ignored p) fails.
    for p in (0.3, 0.5):
        draws = reward.random_rewards(0, 1, range(4000), p)
        assert set(draws) == {0.0, 1.0}
        assert abs(np.mean(draws) - p) < 0.03, (p, np.mean(draws))
    # Successive rows are not correlated: half the pairs of equal neighbours.
    draws = np.asarray(reward.random_rewards(0, 2, range(4000), 0.5))
    assert abs(np.mean(draws[1:] == draws[:-1]) - 0.5) < 0.04


# ---------------------------------------------------------------------- pool
@pytest.fixture(scope="module")
def pool():
    with reward.RewardPool(workers=1, timeout_s=10.0) as p:
        yield p


def test_kinds_through_the_pool(pool):
    responses = [r for r, think, *_ in CASES if not think]
    golds = ["4"] * len(responses)
    formed = [f for _, think, f, _ in CASES if not think]
    right = [c for _, think, _, c in CASES if not think]

    plain = pool.score(responses, golds)
    assert plain.rewards == [1.0 if c else 0.0 for c in right]
    assert plain.correct == right and plain.well_formed == formed

    fmt = pool.score(responses, golds, kind=reward.RewardKind("format"))
    assert fmt.rewards == [1.0 if f else 0.0 for f in formed]
    assert fmt.correct == right and fmt.well_formed == formed

    cof = reward.RewardKind("correct_or_format", format_value=0.25)
    either = pool.score(responses, golds, kind=cof)
    assert either.rewards == [
        1.0 if c else 0.25 if f else 0.0 for c, f in zip(right, formed, strict=True)
    ]

    # Random rewards come from the step and the rows, not from the texts.
    coin = reward.RewardKind("random", random_p=0.5, seed=11)
    drawn = pool.score(responses, golds, kind=coin, step=5)
    assert drawn.rewards == reward.random_rewards(11, 5, range(len(responses)), 0.5)
    other = pool.score(["no answer"] * len(responses), golds, kind=coin, step=5)
    assert other.rewards == drawn.rewards
    assert other.well_formed == [False] * len(responses)
    tail = pool.score(responses[3:], golds[3:], kind=coin, step=5, row_offset=3)
    assert tail.rewards == drawn.rewards[3:]
    assert drawn.correct == right  # the grade is there whatever the reward

    with pytest.raises(ValueError, match="needs mode 'boxed'"):
        pool.score(responses, golds, kind=reward.RewardKind("format"), mode="eval")


def test_format_under_the_think_rule_through_the_pool(pool):
    cases = [c for c in CASES if c[1]]
    responses = [r for r, *_ in cases]
    result = pool.score(
        responses, ["4"] * len(cases), think=True, kind=reward.RewardKind("format")
    )
    assert result.well_formed == [f for _, _, f, _ in cases]
    assert result.rewards == [1.0 if f else 0.0 for _, _, f, _ in cases]
    assert result.correct == [c for *_, c in cases]
    assert result.unclosed == 1  # "Hmm, \boxed{4}"


# -------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "key,value,message",
    [
        ("reward.kind", "spurious", "reward.kind='spurious' must be one of correct"),
        ("reward.random_p", 1.5, r"reward.random_p=1.5 must be in \[0, 1\]"),
        ("reward.format_value", -0.5, r"reward.format_value=-0.5 must be in \[0, 1\]"),
        ("reward.random_p", math.nan, r"reward.random_p=nan must be in \[0, 1\]"),
        ("log.samples_every", -1, "log.samples_every=-1 must be >= 0"),
        ("log.samples_count", 0, "log.samples_count=0 >= 1"),
    ],
)
def test_check_config_names_a_bad_reward_or_samples_key(key, value, message):
    from rlvr_jax import base_config, build

    config = base_config.base_config()
    assert build.check_config(config) == []  # the defaults pass
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ValueError, match=message):
        build.check_config(config)


# ------------------------------------------------------------------- samples
def _fake_step(n_rows):
    """A step's worth of what `SamplesWriter.write` reads: 2 prompts of
    n_rows // 2 responses; row i has i + 1 tokens, every third is cut."""
    roll = types.SimpleNamespace(
        lengths=np.arange(1, n_rows + 1),
        finish_reason=["length" if i % 3 == 0 else "stop" for i in range(n_rows)],
    )
    scored = reward.ScoreResult(
        rewards=[0.5 * (i % 3) for i in range(n_rows)],
        extracted=[str(i) if i % 2 else None for i in range(n_rows)],
        timeouts=0,
        errors=0,
        correct=[i % 3 == 2 for i in range(n_rows)],
        well_formed=[bool(i % 2) for i in range(n_rows)],
    )
    examples = [types.SimpleNamespace(index=124), types.SimpleNamespace(index=7)]
    texts = [f"response {i}" for i in range(n_rows)]
    return texts, roll, scored, examples


def test_samples_log_rows_and_resume(tmp_path):
    from rlvr_jax import io as io_lib
    from rlvr_jax import metrics as metrics_lib

    path = tmp_path / metrics_lib.SAMPLES_FILE
    writer = metrics_lib.SamplesWriter(
        str(tmp_path), every=2, count=3, resume_step=None
    )
    texts, roll, scored, examples = _fake_step(8)
    for step in (1, 2, 3, 4, 5, 6):
        writer.write(step, texts, roll, scored, examples, n=4)
    rows = io_lib.read_log(path)
    assert [r["step"] for r in rows] == [2, 2, 2, 4, 4, 4, 6, 6, 6]
    # 3 of 8 rows spread over the step: 0, 8 // 3, 16 // 3.
    assert rows[:3] == [
        {
            "step": 2,
            "row": 0,
            "index": 124,
            "response": "response 0",
            "answer": None,
            "reward": 0.0,
            "correct": False,
            "well_formed": False,
            "length": 1,
            "finish_reason": "length",
        },
        {
            "step": 2,
            "row": 2,
            "index": 124,
            "response": "response 2",
            "answer": None,
            "reward": 1.0,
            "correct": True,
            "well_formed": False,
            "length": 3,
            "finish_reason": "stop",
        },
        {
            "step": 2,
            "row": 5,
            "index": 7,  # the second prompt's rows are 4..7
            "response": "response 5",
            "answer": "5",
            "reward": 1.0,
            "correct": True,
            "well_formed": True,
            "length": 6,
            "finish_reason": "stop",
        },
    ]
    # A crash cut the last line short: it is dropped, and a run resumed from
    # step 4 drops the rows after it and writes step 6 again, once.
    with path.open("a") as f:
        f.write('{"step": 8, "row": 0, "resp')
    metrics_lib.SamplesWriter(str(tmp_path), every=2, count=3, resume_step=4)
    assert [r["step"] for r in io_lib.read_log(path)] == [2, 2, 2, 4, 4, 4]
    assert path.read_text().endswith("\n")
    # More samples asked than the step has: each row once.
    more = metrics_lib.SamplesWriter(str(tmp_path), every=2, count=20, resume_step=4)
    more.write(6, texts, roll, scored, examples, n=4)
    assert [r["row"] for r in io_lib.read_log(path) if r["step"] == 6] == list(range(8))
    # A fresh run (no restored step) starts the file empty; 0 turns it off.
    metrics_lib.SamplesWriter(str(tmp_path), every=2, count=3, resume_step=None)
    assert io_lib.read_log(path) == []
    off = metrics_lib.SamplesWriter(
        str(tmp_path / "off"), every=0, count=3, resume_step=None
    )
    off.write(2, texts, roll, scored, examples, n=4)
    assert not (tmp_path / "off" / metrics_lib.SAMPLES_FILE).exists()


# ------------------------------------------------------------------ training
def _pi1_config(arg):
    spec = importlib.util.spec_from_file_location("pi1", REPO / "configs" / "pi1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.slow  # a tiny training run, ~20 s
def test_one_format_step_logs_format_and_correct_rates_and_samples(
    tmp_path, monkeypatch
):
    """pi1's tiny run (64 responses to the gold "7") under the format reward.
    The decoded responses get an ending by row: row % 4 == 1 a right box,
    == 3 a wrong one, else an unclosed box; so half are well formed (the
    reward of each), a quarter right, whatever the random model wrote."""
    from rlvr_jax import io as io_lib
    from rlvr_jax import train
    from rlvr_jax.data import tokenizer as tokenizer_lib

    decode = tokenizer_lib.decode_responses
    endings = {
        0: "\nSo \\boxed{7",
        1: "\nSo the answer is \\boxed{7}.",
        2: "\nSo \\boxed{7",
        3: "\nSo the answer is \\boxed{8}.",
    }
    graded = []

    def with_endings(tokenizer, roll):
        texts = [t + endings[i % 4] for i, t in enumerate(decode(tokenizer, roll))]
        graded.extend(texts)
        return texts

    monkeypatch.setattr(tokenizer_lib, "decode_responses", with_endings)
    c = _pi1_config("tiny,steps=1")
    c.reward.kind = "format"
    c.log.samples_every, c.log.samples_count = 1, 3
    c.eval.path = ""  # no evaluation: one sampling and one update
    c.log.tensorboard = False
    workdir = tmp_path / "run"
    train.run(c, str(workdir))
    assert len(graded) == 64
    (row,) = io_lib.read_log(str(workdir / "metrics.jsonl"))
    assert row["step"] == 1
    assert row["reward/format_rate"] == 0.5
    assert row["reward/mean"] == 0.5  # paid for the format alone
    assert row["reward/correct_rate"] == 0.25
    assert row["train_acc/0"] == 0.25  # the example's accuracy, not its reward
    samples = [
        json.loads(line)
        for line in (workdir / "samples.jsonl").read_text().splitlines()
    ]
    # Rows 0, 64 // 3 = 21 and 128 // 3 = 42 of step 1.
    assert [(s["step"], s["row"], s["index"]) for s in samples] == [
        (1, 0, 0),
        (1, 21, 0),
        (1, 42, 0),
    ]
    assert [s["response"] for s in samples] == [graded[0], graded[21], graded[42]]
    assert [(s["reward"], s["correct"], s["well_formed"]) for s in samples] == [
        (0.0, False, False),
        (1.0, True, True),
        (0.0, False, False),
    ]
    assert samples[1]["answer"] == "7"
    for s in samples:  # the tiny config samples at most 8 tokens
        assert 0 <= s["length"] <= c.rollout.max_new_tokens == 8
        assert s["finish_reason"] in ("stop", "length")
        assert s["finish_reason"] == "stop" or s["length"] == 8
