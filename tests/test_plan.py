"""The planner: programs compiled for a TPU topology on this CPU host.

A tiny model on a 4-chip v5e topology keeps every compile to seconds; the
real 1.5B and 7B plans are `slow`. Figures are checked against the compiler's
own `memory_analysis()` and against analytic FLOP and byte counts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from rlvr_jax import base_config as base
from rlvr_jax import build, grpo
from rlvr_jax import plan as plan_lib
from rlvr_jax import sharding as S
from rlvr_jax.data import examples as data_lib
from rlvr_jax.learner import step as learner_step
from rlvr_jax.model import decoder as M
from rlvr_jax.planning import chips, hlo, programs, report, search
from rlvr_jax.planning import compile as compile_lib

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu (the [tpu] extra) to compile for TPU topologies",
)

TOPOLOGY = "v5e:2x2"
# Three layers: the planner costs depth 1 and 2 and extrapolates to 3. Head
# and cache widths of 128 (as in the real models) fill the TPU's 128-lane
# tiles, so byte counts are not dominated by tile padding. Four KV heads
# (not grouped) make the sampler's cache the largest buffer of a step, as at
# real sizes, while the learner's rows stay short: the TPU compiler's time
# grows with the learner's micro-batch, not with the sampler's slots.
MODEL = M.ModelConfig.tiny(
    n_layers=3,
    vocab_size=256,
    d_model=256,
    n_heads=4,
    n_kv_heads=4,
    head_dim=128,
    mlp_dim=512,
    max_seq_len=2048,
    dtype="float32",
)


def tiny_config(**changes):
    """8 prompts × 16 responses of 128 + 256 tokens in one chunk: the
    sampler's cache and prompt store (about 0.2 GB per chip) are too big for
    on-chip memory, so they are planned in HBM and make sampling the peak
    phase; the learner runs 32 micro-batches of one row per chip."""
    c = base.base_config()
    base.make_tiny(c)
    c.data.prompt_buckets = (128,)
    c.data.max_prompt_len = 128
    c.train.batch_size = 8
    c.rollout.n = 16
    c.rollout.max_new_tokens = 256
    c.eval.max_new_tokens = 256
    c.rollout.chunk_size = 128
    c.train.micro_batch_size = 4
    c.eval.every = 4
    c.eval.path = ""
    # Fixed, not "auto": the override test plans against less memory, which
    # must not change the layout under test.
    c.rollout.decode_weights = "replicated"
    for dotted, value in changes.items():
        section, field = dotted.split(".")
        c[section][field] = value
    return c


@pytest.fixture(scope="module")
def tiny_run():
    return build.plan_run(tiny_config(), chips.topology_devices(TOPOLOGY), 8, MODEL)


@pytest.fixture(scope="module")
def tiny_plan():
    """The memory plan (no cost programs, no search) of the tiny run."""
    return plan_lib.plan(
        tiny_config(),
        TOPOLOGY,
        model=MODEL,
        eval_examples=8,
        search=False,
        costs=False,
    )


def test_tiny_train_step_and_sampler_compile_for_a_tpu_topology(tiny_plan, tiny_run):
    p = tiny_plan
    assert p.chips == 4 and p.chip.name == "v5e"
    names = [q.name for q in p.programs]
    assert names == ["prepare", "sample", "ref_logprobs", "train_step", "eval_sample"]
    run = tiny_run
    compiled = programs.compile_train_step(run, MODEL, run.learner)
    devices = compiled.input_shardings[0][1]["tokens"].device_set
    assert {d.platform for d in devices} == {"tpu"} and len(devices) == 4
    for q in p.programs:
        assert q.total > 0 and not q.oom, q
    assert p.fits and p.verdict() == "fits"
    assert p.peak_bytes_per_chip == max(p.phases.values())


def _independent_train_step(run):
    """The train step lowered by jax directly (not through the planner)."""
    state = grpo.sharded_abstract_state(MODEL, run.tx, run.mesh)
    batch = programs.learner_batch(run, ref_logp=True)
    step = grpo.jit_train_step(MODEL, run.learner, run.tx, run.mesh)
    return step.lower(state, batch)


def test_program_bytes_equal_memory_analysis_of_the_same_program(tiny_plan, tiny_run):
    p = tiny_plan
    # The planner compiled exactly this program (same StableHLO for the same
    # devices; its compile cache is keyed by both): compiling it a second
    # time would only cost a minute of TPU compiler time.
    lowered = _independent_train_step(tiny_run)
    key = compile_lib.compile_key(lowered, tiny_run)
    assert key[1] == tuple((d.id, d.device_kind) for d in tiny_run.mesh.devices.flat)
    assert key in compile_lib._COMPILED, "the planner compiled another train step"
    compiled = compile_lib._COMPILED[key]
    m = compiled.memory_analysis()
    q = p.program("train_step")
    assert q.arguments == m.argument_size_in_bytes
    assert q.outputs == m.output_size_in_bytes
    assert q.temp == m.temp_size_in_bytes
    assert q.alias == m.alias_size_in_bytes
    want = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    assert q.total == want
    # The state is donated: its buffers are reused for the new state.
    state = grpo.sharded_abstract_state(MODEL, tiny_run.tx, tiny_run.mesh)
    assert q.alias >= S.bytes_per_device(state.params)


def _matmul_params(config: M.ModelConfig) -> tuple[int, int]:
    """(weights multiplied per token in the layers, in the head)."""
    d, f = config.d_model, config.mlp_dim
    nh, kh = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    per_layer = d * (nh + 2 * kh) + nh * d + 3 * d * f
    return config.n_layers * per_layer, config.vocab_size * d


def _four_micro_batches_config():
    """Short rows, 16 responses in four micro-batches: the FLOP count is
    shape-agnostic, and compiles are quicker."""
    return tiny_config(
        **{"data.prompt_buckets": (8,), "data.max_prompt_len": 8},
        **{"rollout.max_new_tokens": 120, "eval.max_new_tokens": 120},
        **{"train.batch_size": 4, "rollout.n": 4, "rollout.chunk_size": 16},
    )


@pytest.mark.slow  # ~40 s: compiles unrolled cost programs
def test_train_step_flops_agree_with_the_analytic_count():
    """Per token: 6·N (forward + backward) + the remat forward of the layers
    and the checkpointed head (2·N) + attention's two [T, T] products in each
    of those four passes; every micro-batch and every layer counted.

    Rows longer than `attention_block` (π1's) attend in a loop over
    checkpointed query blocks, a loop whose every block must be counted.
    Each block's backward recomputes its scores (the Q·Kᵀ product, half of
    a pass; its softmax adds a little): the blocked step costs that more, not
    less, as it would if the loop's body were counted once.

    The flash kernel (what `model.attention="auto"` picks on TPU) has no
    blocks; its backward kernels recompute both products of the forward,
    one and a half passes more than the einsum backward: counted only if
    the planner adds the kernels XLA has no count for (`kernel_flops`)."""
    config = _four_micro_batches_config()
    t = config.data.prompt_buckets[0] + config.rollout.max_new_tokens
    devices = chips.topology_devices(TOPOLOGY)
    flops = {}
    for kernel, blocks in (("xla", 1), ("xla", 4), ("auto", 1)):
        config.model.attention = kernel
        model = MODEL.replace(attention_block=t // blocks)
        run = build.plan_run(config, devices, 8, model)
        assert run.shapes.learner_width == t
        assert run.learner.attention_kernel == ("flash" if kernel == "auto" else kernel)
        flops[kernel, blocks], _, _ = programs.train_step_cost(run)
    sh = run.shapes
    assert sh.responses // sh.micro_batch == 4  # the scan runs four times
    layers, head = _matmul_params(MODEL)
    attention = 4 * t * MODEL.n_heads * MODEL.head_dim * MODEL.n_layers
    tokens = sh.responses * t / run.mesh.size
    plain = tokens * (8 * layers + 8 * head + 4 * attention)
    scores = tokens * attention / 2
    assert flops["xla", 1] == pytest.approx(plain, rel=0.10)
    assert flops["xla", 4] == pytest.approx(plain + scores, rel=0.10)
    assert scores <= flops["xla", 4] - flops["xla", 1] < 2 * scores
    kernel_extra = flops["auto", 1] - flops["xla", 1]
    assert flops["auto", 1] == pytest.approx(plain + 3 * scores, rel=0.10)
    assert 2 * scores <= kernel_extra < 4 * scores


@pytest.mark.slow
def test_xla_counts_the_micro_batch_loop_body_once():
    """Why the planner multiplies by trip counts: XLA's cost analysis of the
    whole train step counts its micro-batch scan's body once."""
    config = _four_micro_batches_config()
    run = build.plan_run(config, chips.topology_devices(TOPOLOGY), 8, MODEL)
    assert run.shapes.responses // run.shapes.micro_batch == 4
    flops, _, _ = programs.train_step_cost(run)
    compiled = programs.compile_train_step(run, MODEL, run.learner, 16)
    once, _ = compile_lib.cost(compiled)
    assert once < 0.5 * flops


@pytest.mark.slow  # ~40 s: compiles unrolled cost programs
def test_decode_step_bytes_agree_with_weights_plus_filled_cache():
    """At real width (weights and cache far beyond on-chip memory), one decode
    step reads the compute-dtype weights and this chip's cache once."""
    model = M.ModelConfig.qwen2_5_math_1_5b(n_layers=4)
    config = base.base_config()
    # 32 rows per chip, as π1's 256-row chunks on 8 chips: sampling's own
    # traffic over the vocabulary (logits, noise) stays a few percent.
    config.rollout.chunk_size = 128
    run = build.plan_run(config, chips.topology_devices(TOPOLOGY), 0, model)
    sh = run.shapes
    weights = programs.sampler_weights(run, model, programs.compile_prepare(run, model))
    step = programs.compile_decode_step(run, model, weights, sh.sample, run.settings)
    _, nbytes = compile_lib.cost(step)
    slots = sh.prompt_width + sh.new_tokens
    want = report.decode_min_bytes(run, sh.sample.slots, slots)
    cache = want - M.count_params(M.abstract_params(model)) * 2
    # The cache matters in this check, not only the weights.
    assert cache > 0.25 * want, (cache, want)
    # No step can move less; the compiler's extra is what it stages on chip
    # and writes back.
    assert nbytes >= want, (nbytes, want)
    assert nbytes == pytest.approx(want, rel=0.10), (nbytes, want)


def _replicated_compile(fn, *shapes, donate=()):
    """`fn` compiled for the test topology, every array on every chip."""
    import jax
    import numpy as np

    mesh = jax.sharding.Mesh(np.array(chips.topology_devices(TOPOLOGY)), ("d",))
    everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = [jax.ShapeDtypeStruct(s, d, sharding=everywhere) for s, d in shapes]
    return jax.jit(fn, donate_argnums=donate).lower(*args).compile()


def test_hbm_bytes_count_what_each_instruction_moves():
    """Hand-counted HBM traffic of three small programs: a weight read once
    however the compiler stages it on chip; an in-place update of a large
    donated buffer (its row, not the buffer); a loop by its trip count."""
    import jax
    import jax.numpy as jnp

    bf16, f32, i32 = jnp.bfloat16, jnp.float32, jnp.int32
    # 64 MB of weights, staged through on-chip memory by the compiler.
    x, w = (64, 4096), (4096, 8192)
    matmul = _replicated_compile(lambda x, w: x @ w, (x, bf16), (w, bf16))
    want = 2 * (64 * 4096 + 4096 * 8192 + 64 * 8192)
    assert hlo.hbm_bytes(matmul.as_text()) == pytest.approx(want, rel=1e-3)
    assert "S(1)" in matmul.as_text()  # on-chip copies were there to skip

    # One 256 KB row into a 256 MB buffer: the row read, then written.
    update = _replicated_compile(
        lambda buf, row, i: jax.lax.dynamic_update_slice(buf, row[None], (i, 0)),
        ((1024, 65536), f32),
        ((65536,), f32),
        ((), i32),
        donate=(0,),
    )
    row = 65536 * 4
    assert hlo.hbm_bytes(update.as_text()) == pytest.approx(2 * row, rel=1e-3)

    # Six trips, each reading a 64 MiB slice and the accumulator and writing
    # the accumulator back; before the loop, the undonated accumulator is
    # copied (read and written) into the loop's own buffer.
    big, acc = (6, 16 * 2**20), (16 * 2**20,)
    loop = _replicated_compile(
        lambda big, acc: jax.lax.fori_loop(0, 6, lambda i, a: a + big[i], acc),
        (big, f32),
        (acc, f32),
    )
    assert " while(" in loop.as_text()
    mib64 = 64 * 2**20
    want = 6 * 3 * mib64 + 2 * mib64
    assert hlo.hbm_bytes(loop.as_text()) == pytest.approx(want, rel=1e-3)


def test_a_run_that_does_not_fit_gets_an_override_that_fits(tiny_plan):
    fitting = tiny_plan
    phases = fitting.phases
    peak = max(phases, key=phases.get)
    # Less memory than the peak phase needs, more than its fixed part and
    # every other phase: shrinking the peak program's rows must make it fit.
    hbm = phases[peak] - fitting.program(peak).temp * 0.4
    assert hbm > max(v for k, v in phases.items() if k != peak)
    p = plan_lib.plan(
        tiny_config(),
        TOPOLOGY,
        model=MODEL,
        eval_examples=8,
        hbm_bytes=hbm,
        costs=False,
    )
    assert not p.fits
    assert p.verdict().startswith("does not fit by ")
    over = float(p.verdict().split()[-2])
    assert over == pytest.approx((p.peak_bytes_per_chip - hbm) / 1e9, abs=0.01)
    config = tiny_config()
    assert p.overrides
    assert any(v < plan_lib.get(config, k) for k, v in p.overrides.items())
    fixed = plan_lib.plan(
        plan_lib.override(config, p.overrides),
        TOPOLOGY,
        model=MODEL,
        eval_examples=8,
        hbm_bytes=hbm,
        search=False,
        costs=False,
    )
    assert fixed.fits
    line = " ".join(f"--config.{k}={v}" for k, v in p.overrides.items())
    assert f"suggested overrides: {line}" in report.format_plan(p)


def test_a_reference_in_host_memory_leaves_every_phase_but_its_own(tiny_plan, tiny_run):
    on_host = tiny_config(**{"train.reference_on_host": True})
    run = build.plan_run(on_host, tiny_run.mesh.devices.flat, 8, MODEL)
    ref = S.bytes_per_device(programs.reference_params(run, MODEL))
    assert ref > 0
    phases = report.resident_phases(run, tiny_plan.programs)
    assert phases.keys() == tiny_plan.phases.keys()
    for name, resident in tiny_plan.phases.items():
        assert phases[name] == resident - (0 if name == "ref_logprobs" else ref), name


def test_a_token_budget_sets_the_micro_batch_as_the_learner_splits_it(
    tiny_plan, tiny_run
):
    width = tiny_run.shapes.learner_width
    divisor = S.batch_divisor(tiny_run.mesh)
    # Three rows per chip: 12 rows, which do not divide the 128 responses.
    budget = tiny_config(**{"train.max_tokens_per_micro_batch": 3 * width + 5})
    learner = build.learner_config(budget, tiny_run.mesh)
    shapes = build.step_shapes(budget, tiny_run.mesh, 8, tiny_run.settings, learner)
    rows = (shapes.learner_rows, width)
    assert shapes.micro_batch == learner_step.micro_rows(learner, rows, tiny_run.mesh)
    assert shapes.micro_batch == 3 * divisor == 12
    assert shapes.learner_rows == 132  # 11 micro-batches, the last padded
    assert shapes.responses == 128
    # Without a budget: micro_batch_size rows, the batch as it is.
    plain = tiny_run.shapes
    assert (plain.micro_batch, plain.learner_rows) == (4, 128)

    # The fitting micro-batch is offered in the setting that decides it.
    rows_offer = search.largest_sizes(tiny_run, tiny_plan)
    run = dataclasses.replace(tiny_run, token_budget=True)
    tokens_offer = search.largest_sizes(run, tiny_plan)
    assert "train.micro_batch_size" not in tokens_offer
    assert tokens_offer["train.max_tokens_per_micro_batch"] == (
        rows_offer["train.micro_batch_size"] // divisor * width
    )
    assert tokens_offer["rollout.chunk_size"] == rows_offer["rollout.chunk_size"]


def test_compiler_options_reach_the_compile_and_key_its_cache(tiny_run):
    class Lowered:  # records what compile is called with
        def __init__(self):
            self.calls = []

        def as_text(self):
            return "module @options_test"

        def compile(self, compiler_options=None):
            self.calls.append(compiler_options)
            return object()

    lowered = Lowered()
    plain = compile_lib.compile_or_oom(lowered, tiny_run)
    run = dataclasses.replace(tiny_run, compiler_options=compile_lib.NO_WINDOWED_EINSUM)
    off = compile_lib.compile_or_oom(lowered, run)
    assert off is not plain  # the options are part of the cache key
    assert compile_lib.compile_or_oom(lowered, run) is off
    assert lowered.calls == [None, compile_lib.NO_WINDOWED_EINSUM]


def test_an_hbm_shortage_is_sized_and_an_on_chip_one_is_an_error(tiny_run):
    """The compiler's two RESOURCE_EXHAUSTED kinds (the on-chip one is its
    message for π1's train step on v4:2x2x1 with whole-row flash tiles; the
    HBM one has the same form): only the HBM one is a size the plan can
    shrink a batch for."""
    import jax

    hbm = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
        "memory in memory space hbm. Used 18.20G of 15.48G hbm. Exceeded hbm "
        "capacity by 2.72G."
    )
    vmem = (
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
        "memory in memory space vmem. Used 23.35M of 16.00M vmem. Exceeded "
        "vmem capacity by 7.35M."
    )

    class Lowered:
        def __init__(self, message):
            self.message = message

        def as_text(self):
            return f"module @{len(self.message)}"

        def compile(self, compiler_options=None):
            raise jax.errors.JaxRuntimeError(self.message)

    short = compile_lib.compile_or_oom(Lowered(hbm), tiny_run)
    assert isinstance(short, compile_lib.OutOfMemory)
    assert short.memory_analysis().temp_size_in_bytes == int(18.20 * 2**30)
    with pytest.raises(ValueError, match="on-chip memory.*model.attention"):
        compile_lib.compile_or_oom(Lowered(vmem), tiny_run)


def test_json_output_has_the_documented_fields(tiny_plan):
    out = tiny_plan.to_json()
    json.dumps(out)  # serialisable
    for key in ("topology", "hbm_bytes_per_chip", "fits", "peak_bytes_per_chip"):
        assert key in out
    assert "step_seconds" in out
    fields = {"name", "arguments", "outputs", "temp", "total", "flops"}
    for prog in out["programs"]:
        assert fields | {"hbm_bytes", "seconds"} <= set(prog)


def test_evaluation_counts_the_packaged_benchmark():
    """eval.path names a packaged set (math500): its examples are counted,
    not assumed."""
    config = base.base_config()
    assert config.eval.path == "math500"
    count, source = build.eval_example_count(config)
    assert count == len(data_lib.load_examples("math500")) == 500
    assert source == "math500"
    config.eval.max_examples = 64
    assert build.eval_example_count(config)[0] == 64
    config.eval.path = "/no/such/file.jsonl"
    count, source = build.eval_example_count(config)
    assert count == 64 and "not found here" in source


def test_auto_decode_weights_are_sharded_when_a_copy_would_crowd_a_chip():
    """rollout.decode_weights="auto": a replicated compute-dtype copy while it
    takes at most a quarter of a chip, else split as the params are."""
    import jax

    config = tiny_config(**{"rollout.decode_weights": "auto"})
    copy = M.count_params(M.abstract_params(MODEL)) * 4  # float32 compute
    for devices in (chips.topology_devices(TOPOLOGY), jax.devices()):
        mesh = S.make_mesh(data=1, fsdp=-1, tensor=1, devices=devices)
        replicated = S.replicated(mesh)
        assert (
            build.decode_weights_sharding(config, mesh, MODEL, 4 * copy) == replicated
        )
        assert build.decode_weights_sharding(config, mesh, MODEL, 4 * copy - 1) is None
        # Memory unknown (compile-only TPU devices, CPU): replicated.
        assert build.decode_weights_sharding(config, mesh, MODEL) == replicated
    with pytest.raises(ValueError, match="'auto', 'replicated' or 'sharded'"):
        bad = tiny_config(**{"rollout.decode_weights": "tensor"})
        build.decode_weights_sharding(bad, mesh, MODEL)


def test_chip_table_and_device_kinds():
    assert chips.chip_for("TPU v5 lite").name == "v5e"
    assert chips.chip_for("TPU v5p").name == "v5p"
    assert chips.chip_for("TPU v6 lite").name == "v6e"
    assert chips.chip_for("NVIDIA H100 80GB HBM3").name == "h100"
    with pytest.raises(ValueError, match="no chip specs"):
        chips.chip_for("cpu")
    for chip in chips.CHIPS.values():
        assert chip.hbm_bytes > 1e10 and chip.bf16_flops_per_s > 1e14


@pytest.mark.slow
def test_pi1_on_v5e_8_fits():
    config = _load("configs/pi1.py")
    p = plan_lib.plan(config, "v5e:2x4", search=False, costs=False)
    assert p.fits, report.format_plan(p)


@pytest.mark.slow
def test_pi1_on_v4_8_fits():
    """v4:2x2x1 (4 chips of 32 GiB, one host): peak 28.4 GB, the sampling
    phase."""
    config = _load("configs/pi1.py")
    p = plan_lib.plan(config, "v4:2x2x1", search=False, costs=False)
    assert p.fits, report.format_plan(p)


@pytest.mark.slow
def test_7b_on_v5e_16_fits_with_the_overrides_the_plan_finds():
    """The 7B preset on v5e:4x4 (decode weights auto: sharded) does not fit
    as configured: sampling 256 slots and the train step (18.2 GB at one row
    per chip) are over. The search finds rollout chunks of 128, the KL
    reference in host memory and a learner head chunk of 256: peak 17.09 of
    17.18 GB, the train step (about 15 minutes on 2 cores: seven plans)."""
    config = _load("configs/pi1.py")
    with config.unlocked():
        config.model.path = "Qwen/Qwen2.5-7B"
    p = plan_lib.plan(config, "v5e:4x4", costs=False)
    assert not p.fits
    assert p.overrides == {
        "train.reference_on_host": True,
        "train.logits_chunk": 256,
        "rollout.chunk_size": 128,
    }, report.format_plan(p)
    fixed = plan_lib.plan(
        plan_lib.override(config, p.overrides), "v5e:4x4", search=False, costs=False
    )
    assert fixed.fits, report.format_plan(fixed)


@pytest.mark.slow
def test_7b_on_v4_32_fits():
    """v4:2x2x4 (16 chips of 32 GiB over 4 hosts): peak 18.3 GB, the sampling
    phase (decode weights auto: sharded)."""
    config = _load("configs/pi1.py")
    with config.unlocked():
        config.model.path = "Qwen/Qwen2.5-7B"
    p = plan_lib.plan(config, "v4:2x2x4", search=False, costs=False)
    assert p.fits, report.format_plan(p)


def _load(path):
    """`get_config()` of a config file of this repository (path from its root)."""
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("plan_config", root / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_a_cost_program_out_of_memory_is_said_not_counted_as_free():
    """A cost program the compiler refused must not cost 0 s in the plan."""
    from rlvr_jax.planning import compile as compile_lib

    refused = compile_lib.OutOfMemory(
        "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 40.5G of 15.75G"
    )
    with pytest.raises(ValueError, match="no time estimate.*Used 40.5G"):
        compile_lib.cost(refused)


def test_micro_batches_too_big_to_cost_are_costed_halved_and_said(monkeypatch):
    """At 8k-token rows the unrolled cost copy of a 16-row micro-batch may not
    fit a chip where the scanned run does: it is costed at 8 rows × twice as
    many micro-batches, and the plan says the bytes are an upper bound."""
    import types

    from rlvr_jax.planning import compile as compile_lib
    from rlvr_jax.planning import programs

    built = []

    def depth_cost(build, model):
        rows = build(model)
        built.append(rows)
        if rows > 8:
            raise compile_lib.CostOutOfMemory("Used 16.91G of 15.75G")
        return 3.0, 5.0

    monkeypatch.setattr(compile_lib, "depth_cost", depth_cost)
    mesh = types.SimpleNamespace(shape={"data": 1, "fsdp": 8, "tensor": 1})
    monkeypatch.setattr(programs.sharding, "batch_divisor", lambda m: 8)
    run = types.SimpleNamespace(
        shapes=types.SimpleNamespace(micro_batch=16, learner_rows=1024),
        mesh=mesh,
        model=None,
    )
    flops, nbytes, note = programs.micro_batches_cost(run, lambda m, rows: rows)
    assert built == [16, 8]
    assert (flops, nbytes) == (128 * 3.0, 128 * 5.0)
    assert "128 micro-batches of 8 rows" in note and "upper bound" in note
    # At one row per chip nothing smaller is left: the refusal stands.
    run.shapes.micro_batch = 8
    monkeypatch.setattr(
        compile_lib,
        "depth_cost",
        lambda b, m: (_ for _ in ()).throw(compile_lib.CostOutOfMemory("x")),
    )
    with pytest.raises(compile_lib.CostOutOfMemory):
        programs.micro_batches_cost(run, lambda m, rows: rows)


# ------------------------------------------------- the step at a length mix
def _priced_programs(run):
    """The tiny run's programs with made-up costs (nothing compiled): a
    rollout priced by parts, learner passes, a train step with its update."""
    import numpy as np

    from rlvr_jax.planning import mix

    chip = chips.CHIPS["v5e"]
    sh = run.shapes
    width = sh.prompt_width + sh.new_tokens
    rollout = mix.RolloutCost(
        flops=1e12,
        nbytes=1e10,
        line=mix.Line(width // 2, 1e9, 2e8, width, 1.2e9, 3e8),
        rows=sh.responses,
        slots=sh.sample.slots,
        prompt_width=sh.prompt_width,
        new_tokens=sh.new_tokens,
        platform="tpu",
    )
    flops, nbytes = rollout.at(rollout.replay(np.full(sh.responses, sh.new_tokens)))

    def program(name, flops, nbytes, calls=1, **kw):
        seconds = programs.roofline(flops, nbytes, chip)
        return programs.Program(name, calls, 0, 0, 0, 0, flops, nbytes, seconds, **kw)

    return [
        program("prepare", 1e9, 1e9),
        program("sample", flops, nbytes, rollout=rollout),
        program("ref_logprobs", 5e13, 1e11),
        program("train_step", 2e14, 4e11, fixed_flops=1e10, fixed_bytes=1e11),
        program("eval_sample", 1e12, 1e11, calls=0.25),
    ]


def _at_mix(run, progs, lengths_r):
    return report.step_at_mix(
        run,
        progs,
        chips.CHIPS["v5e"],
        lengths_r,
        source="test",
        steps=10,
        initial_eval=0.0,
    )


def test_the_step_at_a_mix_is_at_most_all_at_max_and_equal_at_max(tiny_run):
    """From the same programs: every response at max_new_tokens prices the
    step exactly as the all-at-max plan; shorter responses cost less
    sampling and fewer packed learner rows; evaluation stays at max."""
    import numpy as np

    from rlvr_jax.planning import lengths as lengths_lib

    run, progs = tiny_run, _priced_programs(tiny_run)
    sh = run.shapes
    at_max = report.step_times(run, progs)
    full = _at_mix(run, progs, np.full(sh.responses, sh.new_tokens))
    assert full.learner_fraction == 1.0
    assert full.decoding.steps == full.at_max.steps
    for part, seconds in at_max.items():
        assert full.times[part] == pytest.approx(seconds, rel=1e-12), part
    short = lengths_lib.parse("lognormal:median=30,p99=100")
    drawn, capped = lengths_lib.draw(short, sh.responses, run.settings.n, 256)
    at_mix = _at_mix(run, progs, drawn)
    assert capped == 0 and drawn.max() < sh.new_tokens
    assert at_mix.times["sampling"] < at_max["sampling"]
    assert at_mix.decoding.steps == drawn.max() - 1  # one wave: 128 slots
    packed = at_mix.packed  # narrower rows (256 columns), one sequence each
    assert packed.rows * packed.width < sh.learner_rows * sh.learner_width
    assert at_mix.learner_fraction == packed.rows * packed.width / (
        sh.learner_rows * sh.learner_width
    )
    for part in ("logprob_passes", "update"):
        assert at_mix.times[part] < at_max[part]
    assert at_mix.times["evaluation"] == at_max["evaluation"]
    # The optimizer update does not shrink with the rows.
    train = next(p for p in progs if p.name == "train_step")
    floor = programs.roofline(train.fixed_flops, train.fixed_bytes, chips.CHIPS["v5e"])
    assert at_mix.times["update"] > floor


def test_real_prompt_lengths_and_a_paged_cache_price_the_mix(tiny_run):
    """`prompt_tokens` (the prompts' real length) shrinks the mix's sampling
    (a narrower prompt bucket) and learner (shorter packed sequences); a
    paged rollout is replayed through its page book: as many rows in flight
    as the pool holds, fewer decode steps than the slots' waves, and a
    pool too small for the rows preempts."""

    from rlvr_jax.planning import lengths as lengths_lib
    from rlvr_jax.rollout import paged_engine

    run, progs = tiny_run, _priced_programs(tiny_run)
    sh = run.shapes
    mix = lengths_lib.parse("lognormal:median=30,p99=100")
    drawn, _ = lengths_lib.draw(mix, sh.responses, run.settings.n, 256)
    base = _at_mix(run, progs, drawn)
    short = report.step_at_mix(
        run,
        progs,
        chips.CHIPS["v5e"],
        drawn,
        source="test",
        steps=10,
        initial_eval=0.0,
        prompt_tokens=20,
        buckets=(32, sh.prompt_width),
    )
    assert short.times["sampling"] < base.times["sampling"]
    assert short.times["update"] < base.times["update"]
    assert "prompts of 20 tokens" in " ".join(short.notes)

    sample = next(p for p in progs if p.name == "sample")
    for pages, preempts in ((4096, False), (64, True)):
        paged = dataclasses.replace(
            sample.rollout,
            slots=sh.responses,
            paging=paged_engine.Paging(page=16, pages=pages),
            kernel=True,
        )
        d = paged.replay(drawn, 20)
        assert (d.preemptions > 0) == preempts
        if not preempts:
            assert d.steps == drawn.max() - 1  # every row in flight at once
            assert d.mean_live > 0
        priced = [
            dataclasses.replace(p, rollout=paged) if p.name == "sample" else p
            for p in progs
        ]
        at = report.step_at_mix(
            run,
            priced,
            chips.CHIPS["v5e"],
            drawn,
            source="test",
            steps=10,
            initial_eval=0.0,
            prompt_tokens=20,
        )
        assert "paged KV cache" in " ".join(at.notes)


def test_a_calibration_adds_expected_times_beside_the_roofline(
    tiny_plan, tiny_run, tmp_path
):
    import numpy as np

    from rlvr_jax.planning import calibration

    progs = _priced_programs(tiny_run)
    times = report.step_times(tiny_run, progs)
    mix = _at_mix(tiny_run, progs, np.full(tiny_run.shapes.responses, 100))
    p = dataclasses.replace(
        tiny_plan, programs=progs, times=times, run_seconds=100.0, mix=mix
    )
    text = report.format_plan(p)
    assert "roofline (lower bound)" in text and "roofline, mix" in text
    assert "expected" not in text and "MFU (model FLOPs over" not in text
    assert p.to_json()["expected"] is None
    measured = calibration.Calibration(
        chip="v5e",
        device_kind="TPU v5 lite",
        kinds={"sampling": (2.0, 1.0), "update": (3.0, 2.0)},
    )
    path = tmp_path / "calibration.json"
    calibration.write(measured, str(path))
    p.calibration = calibration.read(str(path))
    text = report.format_plan(p)
    assert "expected (calibrated on TPU v5 lite)" in text
    header = next(line for line in text.splitlines() if line.strip().startswith("part"))
    assert header.split()[1:] == [
        "roofline,", "mix", "roofline,", "all", "max",
        "expected", "mix", "expected", "all", "max",
    ]  # fmt: skip
    row = next(line for line in text.splitlines() if line.strip().startswith("sampl"))
    values = row.split()[1:]
    assert float(values[2]) == pytest.approx(2 * float(values[0]), abs=0.11)
    logprobs = next(line for line in text.splitlines() if "logprob_passes" in line)
    assert logprobs.split()[3:] == ["—", "—"]  # no logprobs factor measured
    out = p.to_json()["expected"]
    assert out["device_kind"] == "TPU v5 lite"
    assert out["step_breakdown_seconds"]["sampling"] == 2 * times["sampling"]
    assert out["step_breakdown_seconds"]["logprob_passes"] is None
    assert out["mix_step_breakdown_seconds"]["update"] == 1.5 * mix.times["update"]
    json.dumps(p.to_json())
    # Another chip's calibration is refused before anything is compiled.
    other = tmp_path / "h100.json"
    calibration.write(dataclasses.replace(measured, chip="h100"), str(other))
    with pytest.raises(calibration.CalibrationError, match="measured on h100"):
        plan_lib.plan(
            tiny_config(), TOPOLOGY, model=MODEL, calibration=str(other), costs=False
        )


@pytest.mark.slow  # compiles a decode step at three widths (~30 s)
def test_a_decode_step_costs_affine_in_its_width(tiny_run):
    """Why the mix prices decode steps by a line through two widths: FLOPs
    and bytes of the compiled step are affine in its cache width."""
    from rlvr_jax.planning import mix

    run = compile_lib.cost_run(tiny_run)
    sh = run.shapes
    weights = programs.sampler_weights(run, MODEL, programs.compile_prepare(run, MODEL))
    costs = {
        w: compile_lib.cost(
            programs.compile_decode_step(
                run, MODEL, weights, sh.sample, run.settings, w
            )
        )
        for w in (128, 256, 384)
    }
    line = mix.Line(128, *costs[128], 384, *costs[384])
    flops, nbytes = line.at(256)
    assert costs[384][1] > costs[128][1]  # the cache is in the bytes
    assert costs[256][0] == pytest.approx(flops, rel=0.02)
    assert costs[256][1] == pytest.approx(nbytes, rel=0.02)


@pytest.mark.slow  # ~3 min: the tiny plan's cost programs
def test_a_costed_plan_prices_the_step_at_the_mix():
    p = plan_lib.plan(
        tiny_config(),
        TOPOLOGY,
        model=MODEL,
        eval_examples=8,
        search=False,
        lengths="lognormal:median=30,p99=100",
    )
    assert p.mix is not None and p.mix.times["sampling"] < p.times["sampling"]
    assert p.mix.step_seconds < p.step_seconds
    out = p.to_json()
    assert out["mix"]["step_seconds"] == p.mix.step_seconds
    assert out["step_seconds"] == p.step_seconds  # all at max, as before
    text = report.format_plan(p)
    assert "roofline, mix" in text and "roofline, all max" in text
