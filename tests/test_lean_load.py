"""Lean loading, int8 weights, safetensors and the decoding thread choice (arch/lean_load.py,
arch/quantize.py, arch/convert_checkpoint.py, generation/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from arch import GPT2Config, GPT2Model, save_checkpoint, split_model_parallel_state
from arch.convert_checkpoint import convert_checkpoint
from arch.lean_load import build_inference_model, load_model_weights
from arch.quantize import quantize_layers_, quantize_rows
from generation.threads import StepThreads

from .conftest import fixture_path
from .gpt_fixture import build_fixture_model, fixture_config, fixture_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(layers=2, hidden=32, heads=4, vocab=64, positions=16) -> GPT2Config:
    return GPT2Config(
        num_layers=layers,
        vocab_size=vocab,
        hidden_size=hidden,
        num_attention_heads=heads,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        max_sequence_length=positions,
        max_memory_length=0,
        checkpoint_activations=False,
    )


def random_model(cfg: GPT2Config, dtype=torch.float32) -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model.from_config(cfg).to(dtype).eval()


def logits(model, tokens) -> torch.Tensor:
    n = tokens.size(1)
    with torch.no_grad():
        out, *_ = model(tokens, torch.arange(n).expand_as(tokens), torch.ones(1, 1, n, n).tril_())
    return out.float()


# ---------------------------------------------------------------- memory

LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from arch import GPT2Config
    from arch.lean_load import build_meta_model, load_model_weights, model_bytes
    from common.dtypes import DTYPES

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    path, dtype, quantize, cfg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    model = build_meta_model(GPT2Config(**cfg), DTYPES[dtype], quantize)
    torch.empty(1) + 1  # torch's allocator and thread pool up before the baseline
    before = status("VmRSS")
    weights = model_bytes(model)
    model = model.to_empty(device="cpu")
    load_model_weights(model, path)
    print(json.dumps({"weights": weights, "grown": status("VmHWM") - before}))
    """
)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """An fp16 checkpoint of ~300 MB (as released checkpoints are fp16), and its safetensors twin:
    large enough that the interpreter's own ~15 MB of allocations stay within the 15%."""
    cfg = config(layers=12, hidden=1024, heads=8, vocab=4096, positions=64)
    folder = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT2Model.from_config(cfg).state_dict().items()}
    state = {k: torch.randn(s, dtype=torch.float32).to(torch.float16) for k, s in shapes.items()}
    save_checkpoint(str(folder / "pt"), "release", state)
    convert_checkpoint(str(folder / "pt"), str(folder / "st"))
    return folder, cfg


@pytest.mark.parametrize(
    "dtype, quantize, source",
    [("bfloat16", "none", "pt"), ("float32", "none", "pt"), ("float16", "none", "st"), ("bfloat16", "int8", "pt")],
)
def test_loading_holds_one_copy_of_the_weights(big_checkpoint, dtype, quantize, source):
    """Peak resident memory grows by at most 1.15 times the weights in their final dtype:
    no float32 model before the cast, no whole checkpoint beside the model (its mapped
    pages are given back tensor by tensor)."""
    folder, cfg = big_checkpoint
    cfg_json = json.dumps({k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(folder / source), dtype, quantize, cfg_json],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["grown"] <= 1.15 * result["weights"], result


def test_bf16_load_is_the_cast_checkpoint(big_checkpoint):
    folder, cfg = big_checkpoint
    model = build_inference_model(cfg, torch.bfloat16)
    load_model_weights(model, str(folder / "pt"))
    state = torch.load(folder / "pt" / "release" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    for key, value in model.state_dict().items():
        assert value.dtype == torch.bfloat16
        assert torch.equal(value, state[key].to(torch.bfloat16)), key


# ---------------------------------------------------------------- int8


def test_quantize_rows_round_trip_within_half_a_step():
    w = torch.randn(300, 64) * torch.linspace(0.01, 3, 300)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()


# int8 against float32 on the public fixture (logits up to ~7); bf16 alone gives max 0.07
INT8_TOLERANCE = {"float32": (0.15, 0.03), "bfloat16": (0.25, 0.05)}  # (max abs, mean abs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_logits_close_to_float32_on_the_fixture(dtype):
    reference = build_fixture_model()
    inputs = fixture_inputs()
    cfg = fixture_config()
    gpt = config(
        layers=cfg["num_layers"],
        hidden=cfg["hidden_size"],
        heads=cfg["num_attention_heads"],
        vocab=cfg["vocab_size"],
        positions=cfg["max_position_embeddings"],
    )
    model = build_inference_model(gpt, getattr(torch, dtype), quantize="int8")
    load_model_weights(model, fixture_path("gpt", "checkpoint"))
    assert model.transformer.layers[0].mlp.dense_h_to_4h.weight.dtype == torch.int8
    mask = inputs["causal_attention_mask"]
    with torch.no_grad():
        want, *_ = reference(inputs["tokens"], inputs["position_ids"], mask)
        got, *_ = model.eval()(inputs["tokens"], inputs["position_ids"], mask.to(getattr(torch, dtype)))
    diff = (got.float() - want).abs()
    max_abs, mean_abs = INT8_TOLERANCE[dtype]
    assert diff.max() <= max_abs and diff.mean() <= mean_abs, (diff.max(), diff.mean())
    assert (got.float().argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


def test_int8_decoding_kernel_matches_widened_weights():
    """The CPU kernel (few rows, bf16) and the widening path compute the same product."""
    from arch.quantize import int8_linear

    q, scale = quantize_rows(torch.randn(96, 64))
    x = torch.randn(3, 64).to(torch.bfloat16)
    kernel = int8_linear(x, q, scale.to(torch.bfloat16))
    widened = (x.float() @ (q.float() * scale[:, None]).t()).to(torch.bfloat16)
    torch.testing.assert_close(kernel.float(), widened.float(), atol=0.05, rtol=0.02)


# ---------------------------------------------------------------- safetensors


def test_safetensors_conversion_gives_the_same_logits(tmp_path):
    cfg = config()
    model = random_model(cfg)
    tokens = torch.randint(0, 64, (2, 10))
    save_checkpoint(str(tmp_path / "mp1"), 7, model.state_dict())
    for rank, part in enumerate(split_model_parallel_state(model.state_dict(), 2)):
        save_checkpoint(str(tmp_path / "mp2"), 7, part, mp_rank=rank, write_tracker=rank == 1)
    for src in ("mp1", "mp2"):  # model-parallel ranks are merged on the way
        convert_checkpoint(str(tmp_path / src), str(tmp_path / f"{src}-st"))
        loaded = build_inference_model(cfg, torch.float32)
        load_model_weights(loaded, str(tmp_path / f"{src}-st"))
        assert torch.equal(logits(loaded, tokens), logits(model, tokens)), src
    single = convert_checkpoint(str(tmp_path / "mp1"), str(tmp_path / "one.safetensors"), dtype="bfloat16")
    loaded = build_inference_model(cfg, torch.bfloat16)
    load_model_weights(loaded, single)
    assert torch.equal(logits(loaded, tokens), logits(model.to(torch.bfloat16), tokens))


def test_safetensors_loading_runs_no_pickle(tmp_path, monkeypatch):
    cfg = config()
    save_checkpoint(str(tmp_path / "pt"), 1, random_model(cfg).state_dict())
    convert_checkpoint(str(tmp_path / "pt"), str(tmp_path / "st"))

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) used for a safetensors checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    load_model_weights(build_inference_model(cfg, torch.float32), str(tmp_path / "st"))


def test_vqvae_converted_to_safetensors_decodes_the_same(tmp_path):
    from vqvae import code2img, load_model

    source = os.path.join(ROOT, "pretrained", "vqvae", "shapes_vqvae_base.pt")
    target = str(tmp_path / "vqvae.safetensors")
    convert_checkpoint(source, target)
    codes = torch.randint(0, 512, (1, 8, 8))
    a, b = load_model(source), load_model(target)
    assert torch.equal(code2img(a, codes), code2img(b, codes))


def test_convert_checkpoint_cli_errors_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "arch.convert_checkpoint", str(tmp_path / "missing"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- threads


class FakeClock:
    """A clock that advances by what the current step costs on the current thread count."""

    def __init__(self, cost):
        self.now, self.cost = 0.0, cost

    def __call__(self):
        return self.now

    def step(self):
        self.now += self.cost[torch.get_num_threads()]


@pytest.mark.parametrize("fast", [1, 2])
def test_step_threads_keep_the_faster_count_and_look_again(fast):
    slow = 3 - fast
    clock = FakeClock({fast: 0.01, slow: 0.05})
    chooser = StepThreads(2, probe_steps=3, period=10, clock=clock)
    previous = torch.get_num_threads()
    counts = []
    for _ in range(40):
        chooser.run(lambda: (clock.step(), counts.append(torch.get_num_threads())))
    assert torch.get_num_threads() == previous  # restored after every step
    assert chooser.history and set(chooser.history) == {fast}
    assert counts[7:16] == [fast] * 9  # a warm-up step, 3 probes each, then the winner until the next probe
    assert len(chooser.history) >= 2  # probed again after ``period`` steps
    clock.cost = {fast: 0.05, slow: 0.01}  # the machine's load changed
    for _ in range(40):
        chooser.run(clock.step)
    assert chooser.history[-1] == slow


@pytest.mark.parametrize("dtype,weights", [(torch.float32, "none"), (torch.bfloat16, "none"), (torch.bfloat16, "int8")])
def test_decoding_logits_do_not_depend_on_the_thread_count(dtype, weights):
    """The sampler switches thread counts between steps: a seed must still give one image
    (12 steps: SDPA's fused float32 kernel already differs in the last bit at 8 keys on
    some CPUs, which the one-query attention avoids)."""
    model = random_model(config(layers=2, hidden=64, heads=4, vocab=128, positions=32), dtype)
    if weights == "int8":
        quantize_layers_(model, dtype)
    tokens = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            cache, steps = model.new_kv_cache(), []
            with torch.no_grad():
                for p in range(12):
                    mask = torch.ones(1, 1, 1, 1) if p == 0 else 0
                    out, *_ = model(tokens[:, p : p + 1], torch.full((3, 1), p), mask, kv_cache=cache, last_only=True)
                    steps.append(out)
            runs.append(torch.cat(steps, 1))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_slices_a_whole_model_file_as_the_original_split(monkeypatch, rank):
    """safetensors files hold the whole model: under model parallelism each rank cuts its
    part the way arch.change_mp's mp_rank_XX files are cut."""
    import types

    from arch import lean_load

    state = random_model(config()).state_dict()
    fake = types.SimpleNamespace(get_model_parallel_world_size=lambda: 2, get_model_parallel_rank=lambda: rank)
    monkeypatch.setattr(lean_load, "mpu", fake)
    expected = split_model_parallel_state(state, 2)[rank]
    for key, value in state.items():
        assert torch.equal(lean_load._rank_slice(key, value), expected[key]), key


def test_weights_that_do_not_fit_are_refused_before_loading_with_the_smaller_formats():
    from types import SimpleNamespace

    from generation.model_setup import check_weights_fit

    cfg = SimpleNamespace(load="ckpt", dtype="float32", quantize="none", device="cpu")
    check_weights_fit(cfg, 8 << 30, 16 << 30)  # fits
    check_weights_fit(cfg, 8 << 30, None)  # free memory unknown: nothing to say
    with pytest.raises(ValueError) as info:
        check_weights_fit(cfg, 16 << 30, 10 << 30)
    message = str(info.value)
    assert "16.0 GiB" in message and "10.0 GiB" in message and "--bf16 (8.0 GiB)" in message
    assert "--quantize int8" in message and "\n" not in message
