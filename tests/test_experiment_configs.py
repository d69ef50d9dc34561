"""The paper's experiments as configs: each builds the run it names.

Cheap checks only (no model, no training): the keys each config changes, the
examples `build.train_examples` makes of it on the packaged pool, the
label override (hand-made cases), and the `paper_protocol` argument.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from rlvr_jax import base_config, build
from rlvr_jax.data import examples as D

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"exp_{name[:-3]}", CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def _labels(config) -> dict[int, tuple[str, int]]:
    """{index: (ground truth, rows)} of the examples the config trains on."""
    out: dict[int, tuple[str, int]] = {}
    for ex in build.train_examples(config):
        label, rows = out.get(ex.index, (ex.ground_truth, 0))
        assert label == ex.ground_truth  # every copy carries the same label
        out[ex.index] = (label, rows + 1)
    return out


# Labels from the pool file (dsr_sub.parquet, `reward_model.ground_truth`).
PI1, PI2, PI13, PI1209 = (
    (124, "12.8"),
    (267, "24"),
    (682, "\\frac{4}{3}"),
    (789, "-\\frac{2023}{2024}"),
)


@pytest.mark.parametrize(
    "name,examples",
    [
        ("pi2.py", [PI2]),
        ("pi1209.py", [PI1209]),
        ("four_shot.py", [PI1, PI2, PI13, PI1209]),
        ("entropy_only.py", [PI1]),
        ("format_reward.py", [PI1]),
        ("random_reward.py", [PI1]),
        ("label_noise.py", [(124, "4")]),  # π1 with its label replaced
    ],
)
def test_each_config_trains_on_its_examples(name, examples):
    rows = 128 // len(examples)
    assert _labels(_config(name)) == {i: (label, rows) for i, label in examples}


def test_what_each_ablation_and_control_changes():
    pi1 = _config("pi1.py")
    ent = _config("entropy_only.py")
    assert (ent.loss.pg_coef, ent.loss.kl_coef, ent.optim.weight_decay) == (0, 0, 0)
    assert ent.loss.entropy_coef == pi1.loss.entropy_coef == 0.001
    assert ent.train.steps == pi1.train.steps == 2000
    assert _config("format_reward.py").reward.kind == "format"
    assert _config("random_reward.py").reward.kind == "random"
    assert pi1.reward.kind == "correct" and pi1.data.label_override == ""
    assert _config("label_noise.py").data.label_override == "124=4"
    tiny = _config("label_noise.py", "tiny")  # relabels the built-in task's "7"
    assert _labels(tiny) == {0: ("8", 8)}
    dsr = _config("dsr_sub.py")
    assert (dsr.train.steps, dsr.data.replicate, tuple(dsr.data.indices)) == (
        2000,
        0,
        (),
    )


def test_dsr_sub_trains_on_the_whole_pool_in_nine_steps_an_epoch():
    examples = build.train_examples(_config("dsr_sub.py"))
    assert len(examples) == len({ex.index for ex in examples}) == 1209
    assert len(examples) // 128 == 9


# ------------------------------------------------------------ label override
def test_label_override_spec_parses():
    assert D.parse_label_override("") == {}
    assert D.parse_label_override("124=4") == {124: "4"}
    assert D.parse_label_override(" 124 = 12.7 ; 682=\\frac{1}{3};") == {
        124: "12.7",
        682: "\\frac{1}{3}",
    }
    assert D.parse_label_override("5=x=3") == {5: "x=3"}  # the first "=" splits


@pytest.mark.parametrize(
    "spec,message",
    [
        ("124", "'124' is not INDEX=LABEL"),
        ("124=", "'124=' is not INDEX=LABEL"),
        ("pi1=4", "'pi1=4' is not INDEX=LABEL"),
        ("124=4;124=5", "names example index 124 twice"),
    ],
)
def test_a_malformed_label_override_is_one_line(spec, message):
    config = _config("pi1.py", "tiny")
    config.data.label_override = spec
    for check in (build.check_config, build.train_examples):
        with pytest.raises(ValueError, match=message) as e:
            check(config)
        assert str(e.value).startswith(f"data.label_override={spec!r}: ")
        assert "\n" not in str(e.value)


def test_label_override_replaces_before_replication_and_is_said():
    config = _config("pi1.py", "tiny")  # the built-in task: index 0, label "7"
    assert {ex.ground_truth for ex in build.train_examples(config)} == {"7"}
    config.data.label_override = "0=8"
    rows = build.train_examples(config)
    assert len(rows) == 8 and {(ex.index, ex.ground_truth) for ex in rows} == {(0, "8")}
    assert rows[0].messages == D.builtin_task()[0].messages  # prompt untouched
    notes = [line for line in build.check_config(config) if "label_override" in line]
    assert notes == [
        "note: data.label_override: example 0 trains on the label '8' instead "
        "of its own"
    ]


def test_label_override_of_an_unselected_example_is_one_line():
    config = _config("pi1_pi13.py")
    config.data.label_override = "124=4;267=1"
    with pytest.raises(ValueError) as e:
        build.train_examples(config)
    assert str(e.value) == (
        "data.label_override='124=4;267=1': label override for example "
        "index(es) [267] not among the 2 selected examples; they are [124, 682]"
    )


# ------------------------------------------------------------ paper protocol
def test_paper_protocol_exports_every_evaluated_step():
    c = _config("pi1.py", "paper_protocol")
    assert (c.eval.every, c.checkpoint.every, c.checkpoint.export_hf_every) == (
        20,
        20,
        20,
    )
    # 0, 20, ..., 2000: the steps the reference's evaluation script sweeps.
    assert len(range(0, c.train.steps + 1, c.checkpoint.export_hf_every)) == 101
    tiny = _config("entropy_only.py", "tiny,paper_protocol,steps=40")
    assert (tiny.checkpoint.export_hf_every, tiny.train.steps) == (20, 40)
    assert _config("pi1.py").checkpoint.export_hf_every == 0  # off by default
    with pytest.raises(ValueError, match="unknown config argument 'paper'"):
        base_config.apply_arg(base_config.base_config(), "paper")
