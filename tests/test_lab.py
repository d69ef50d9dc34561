"""The laptop lab: several held-out sets per evaluation, and every lab config
building and running a few steps from an SFT checkpoint."""

from __future__ import annotations

import dataclasses
import importlib.util
import types
from pathlib import Path

import numpy as np
import pytest

from rlvr_jax import base_config, build, io, sft, train
from rlvr_jax.data import examples as data
from rlvr_jax.data import tokenizer as tokenizer_lib
from rlvr_jax.lab import synthetic

LAB = Path(__file__).resolve().parents[1] / "configs" / "lab"
RL_CONFIGS = ("full_pool", "one_shot", "entropy_only", "no_entropy", "one_domain")


def lab_config(name, arg):
    spec = importlib.util.spec_from_file_location(f"lab_{name}", LAB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# ----------------------------------------------------- several eval sets
@dataclasses.dataclass
class _Scored:
    rewards: list


class _GoldIsOnePool:
    """Scores 1 where the gold answer is "1": which set a row belongs to
    decides its reward, whatever the random model wrote."""

    def score(self, texts, golds):
        assert len(texts) == len(golds)
        return _Scored([float(g == "1") for g in golds])


def _write_set(path: Path, gold: str, n: int) -> str:
    path.parent.mkdir(parents=True)
    io.write_jsonl(path, [{"problem": f"Q{i}?", "answer": gold} for i in range(n)])
    return str(path)


def test_eval_path_takes_several_sets_each_logged_on_its_own(tmp_path, monkeypatch):
    tok = tokenizer_lib.build_tiny()
    a = _write_set(tmp_path / "easy" / "test.jsonl", "1", 3)
    b = _write_set(tmp_path / "hard" / "test.jsonl", "0", 5)
    config = base_config.base_config()
    base_config.make_tiny(config)
    config.eval.path = f"{a}, {b}"
    sets = build.eval_sets(config, tok)
    assert [(s.name, len(s.examples), len(s.prompts)) for s in sets] == [
        ("easy", 3, 3),
        ("hard", 5, 5),
    ]
    calls = []

    def one_rollout(model_config, params, prompts, settings, key, **kwargs):
        # The sampler itself is tested elsewhere (and compiling it costs the
        # suite tens of seconds): here, every prompt's row i answers i tokens.
        calls.append((prompts, kwargs["per_call"], kwargs["slots"]))
        lengths = np.arange(1, len(prompts) + 1)
        return types.SimpleNamespace(
            tokens=np.full((len(prompts), len(prompts)), 40), lengths=lengths
        )

    monkeypatch.setattr(train.engine, "rollout_in_calls", one_rollout)
    pool = _GoldIsOnePool()
    out = train.evaluate(None, None, sets, None, tok, pool, chunk=3)
    prompts = sets[0].prompts + sets[1].prompts
    # Every set's prompts in one sampler run, in calls of 3 prompts.
    assert calls == [(prompts, 3, 3)]
    assert out["eval/easy/acc"] == 1.0 and out["eval/hard/acc"] == 0.0
    assert out["eval/easy/response_len"] == 2.0  # rows 1..3
    assert out["eval/hard/response_len"] == 6.0  # rows 4..8
    assert train.evaluate(None, None, [], None, tok, pool, chunk=3) == {}
    config.eval.path = f"{a},{a}"
    with pytest.raises(ValueError, match="share a metric name"):
        build.eval_sets(config, tok)


# ------------------------------------------------------------ lab configs
def test_every_lab_config_builds_with_its_settings(tmp_path):
    sft_config = lab_config("sft", f"tiny,data={tmp_path}/data")
    assert sft_config.data.train_path == f"{tmp_path}/data/train.jsonl"
    arg = f"tiny,data={tmp_path}/data,sft={tmp_path}/sft"
    configs = {
        name: lab_config(
            name, arg + ",index=3" * name.endswith(("shot", "only", "entropy"))
        )
        for name in RL_CONFIGS
    }
    for name, c in configs.items():
        assert c.checkpoint.resume_from == f"{tmp_path}/sft", name
        assert [build.eval_name(p) for p in c.eval.path.split(",")] == list(
            synthetic.DOMAINS
        )
    assert len(configs["full_pool"].data.indices) == 4 * base_config.LAB_RL_POOL
    assert configs["one_shot"].data.indices == (3,)
    assert configs["one_shot"].data.replicate == configs["one_shot"].train.batch_size
    assert configs["entropy_only"].loss.pg_coef == 0.0
    assert configs["entropy_only"].loss.kl_coef == 0.0
    assert configs["entropy_only"].optim.weight_decay == 0.0
    for kind in ("format", "random"):
        control = lab_config("control", f"{arg},index=3,reward={kind}")
        assert (control.reward.kind, control.data.indices) == (kind, (3,))
        assert control.loss.pg_coef == 1.0
    with pytest.raises(ValueError, match="reward=format or reward=random"):
        lab_config("control", f"{arg},index=3")
    assert configs["no_entropy"].loss.entropy_coef == 0.0
    assert configs["no_entropy"].loss.pg_coef == 1.0
    # One domain's pool holds that domain's problems only.
    pool = data.load_examples(configs["one_domain"].data.train_path)
    chosen = data.select(pool, configs["one_domain"].data.indices)
    arith = {
        ex.index for ex in data.load_examples(f"{tmp_path}/data/arith/train.jsonl")
    }
    assert {ex.index for ex in chosen} <= arith
    with pytest.raises(ValueError, match="index=I"):
        lab_config("one_shot", arg)


@pytest.fixture(scope="module")
def sft_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    config = lab_config("sft", f"tiny,data={root}/data")
    config.train.steps = config.eval.every = config.checkpoint.every = 1
    config.eval.max_examples = 2
    config.eval.max_new_tokens = 0  # loss only: the RL runs need only the weights
    sft.run(config, str(root / "sft"))
    return root


@pytest.mark.slow  # ~40-90 s a config on 2 busy cores: five RL runs
@pytest.mark.parametrize("name", RL_CONFIGS)
def test_lab_config_runs_a_few_steps_from_the_sft_checkpoint(name, sft_workdir):
    root = sft_workdir
    arg = f"tiny,data={root}/data,sft={root}/sft,steps=2"
    if name in ("one_shot", "entropy_only", "no_entropy"):
        arg += ",index=5"
    config = lab_config(name, arg)
    config.eval.every = 2
    config.eval.max_examples = 2
    config.eval.max_new_tokens = 4
    config.rollout.max_new_tokens = 16
    workdir = root / name
    train.run(config, str(workdir))
    rows = io.read_log(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for domain in synthetic.DOMAINS:
        assert 0.0 <= rows[-1][f"eval/{domain}/acc"] <= 1.0
    assert np.isfinite(rows[-1]["loss/total"])


# ----------------------------------------------------------------- report
def _fake_run(path: Path, accs: list[tuple[float, float]], train: list[float]):
    """A workdir whose log has eval accuracies (a, b) per 5 steps and train
    accuracies per step."""
    rows = []
    for i, (a, b) in enumerate(accs):
        rows.append({"step": 5 * i, "eval/arith/acc": a, "eval/count/acc": b})
    for step, t in enumerate(train, start=1):
        rows.append({"step": step, "train_acc/7": t})
    path.mkdir(parents=True)
    io.write_jsonl(path / "metrics.jsonl", sorted(rows, key=lambda r: r["step"]))


def test_lab_report_table_and_figure(tmp_path):
    from rlvr_jax.lab import report as lab

    _fake_run(tmp_path / "top_s0", [(0.1, 0.3), (0.5, 0.7)], [0.5, 0.95, 1.0, 1.0, 1.0])
    _fake_run(tmp_path / "top_s1", [(0.1, 0.3), (0.3, 0.5)], [0.2, 0.4, 0.6, 0.8, 0.9])
    _fake_run(tmp_path / "top_s2", [(0.1, 0.3), (0.4, 0.6)], [0.0, 0.2, 0.9, 1.0, 1.0])
    _fake_run(tmp_path / "low_s0", [(0.1, 0.3), (0.1, 0.1)], [0.0] * 5)
    runs = lab.parse_runs(f"top={tmp_path}/top_s*, low={tmp_path}/low_s*")
    assert runs["top"] == [str(tmp_path / f"top_s{i}") for i in range(3)]
    png, md = lab.write_report(runs, str(tmp_path / "report"))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"
    lines = Path(md).read_text().splitlines()
    assert lines[0] == (
        "| run | seeds | mean @0 | arith @end | count @end | mean @end "
        "| change of mean | best mean (step) | train acc ≥90% at step |"
    )
    # top, by hand: mean @end per seed 0.6, 0.4, 0.5 → 50, sample std 10
    # points, t(0.975, 2 df) = 4.3027 → half-width 4.3027 · 10 / √3 = 24.8;
    # arith 0.5, 0.3, 0.4 and count 0.7, 0.5, 0.6 have the same spread. The
    # change from @0 (20 in every seed) is +30 ± 24.8.
    assert lines[2] == (
        "| top | 3 | 20.0 ± 0.0 | 40.0 ± 24.8 | 60.0 ± 24.8 | 50.0 ± 24.8 "
        "| +30.0 [+5.2, +54.8] | 50.0 (5) | 2, 5, 3 |"
    )
    # One seed has no interval.
    assert lines[3] == (
        "| low | 1 | 20.0 | 10.0 | 10.0 | 10.0 | -10.0 | 20.0 (0) | never |"
    )
    with pytest.raises(lab.plot.PlotError, match="no workdir matches"):
        lab.parse_runs(f"x={tmp_path}/nothing_*")


def test_lab_intervals_match_published_t_quantiles_and_welch_by_hand(tmp_path):
    from rlvr_jax.lab import report as lab

    # Published two-sided 95% t quantiles: 12.706 (1 df), 2.365 (7), 2.262 (9).
    for df, t in ((1, 12.706), (7, 2.365), (9, 2.262)):
        values = np.array([0.0, 1.0] + [0.5] * (df - 1))
        sem = np.std(values, ddof=1) / np.sqrt(df + 1)
        assert lab.half_width(values) / sem == pytest.approx(t, abs=1e-3)
    # Welch by hand: a = 1, 2, 3 (var 1), b = 2, 4, 6, 8 (var 20/3):
    # se² = 1/3 + 5/3 = 2; df = 4 / ((1/3)²/2 + (5/3)²/3) = 4.0755;
    # t(0.975, 4.0755) ≈ 2.757 (tables: 2.776 at 4 df, 2.571 at 5;
    # interpolated in 1/df).
    diff, half = lab.welch(np.array([1.0, 2, 3]), np.array([2.0, 4, 6, 8]))
    assert diff == -3.0
    assert half == pytest.approx(2.757 * np.sqrt(2), abs=5e-3)
    # --against adds the difference column; the run itself has none.
    for s, end in enumerate((0.5, 0.3, 0.4)):
        _fake_run(tmp_path / f"a_s{s}", [(0.1, 0.3), (end, end)], [0.5] * 5)
    for s, end in enumerate((0.2, 0.3, 0.1)):
        _fake_run(tmp_path / f"c_s{s}", [(0.1, 0.3), (end, end)], [0.5] * 5)
    runs = lab.parse_runs(f"a={tmp_path}/a_s*,c={tmp_path}/c_s*")
    text = lab.table(lab.summarize(runs), against="c")
    a_row, c_row = text.splitlines()[2:4]
    # a - c = 0.4 - 0.2; equal spreads (10 points): se = 10·√(2/3), df = 4,
    # t = 2.776 → half-width 22.7 points.
    assert "| vs c @end |" in text.splitlines()[0]
    assert "| +20.0 [-2.7, +42.7] |" in a_row
    assert "| – |" in c_row
    with pytest.raises(lab.plot.PlotError, match="not a run label"):
        lab.table(lab.summarize(runs), against="b")


def test_the_planner_counts_every_eval_set(tmp_path):
    a = _write_set(tmp_path / "a" / "test.jsonl", "1", 3)
    b = _write_set(tmp_path / "b" / "test.jsonl", "0", 5)
    config = base_config.base_config()
    config.eval.path = f"{a},{b}"
    assert build.eval_example_count(config) == (8, f"{a},{b}")
    config.eval.max_examples = 4
    assert build.eval_example_count(config)[0] == 7
