"""Smoke tests of `cct bench` (benchmark.py): tiny models, 1-2 repeats, schema and sanity, no speed claims."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compact_transformers import benchmark
from compact_transformers.benchmark import (
    VARIANTS,
    BenchConfig,
    Gemm,
    ModelSpec,
    add_bench_arguments,
    bench_latency,
    bench_scaling,
    bench_time_to_accuracy,
    build_train_parts,
    config_from_args,
    find_warnings,
    first_reaching,
    format_report,
    gemm_rate,
    measure_interleaved,
    model_gemms,
    model_peaks,
    parse_model_spec,
    percentile,
    resolve_variant,
    run_bench,
    step_settings,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One thread: on a busy shared CPU two OpenMP threads can stall each other; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_run_bench_writes_report(tmp_path, capsys, one_thread):
    out = tmp_path / "results" / "bench.json"
    args = parse([
        "--models", "cct_2_3x2_32:16x16x1", "--batch-sizes", "4", "--warmup", "1", "--repeats", "2",
        "--peak-sizes", "64", "--threads", "1", "--device", "cpu", "--output", str(out), "--quiet",
    ])  # fmt: skip
    assert run_bench(args) == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "cct-bench/2"
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["torch"] == torch.__version__ and machine["gpu"] is None
    assert set(machine["cpu_flags"]) >= {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert report["matmul_peak"]["fp32"]["tflops"] > 0 and report["matmul_peak"]["bf16"]["tflops"] > 0

    results = report["results"]
    expected = {(v, m) for v in ("baseline", "fast") for m in ("train", "infer")}
    assert {(r["variant"], r["mode"]) for r in results} == expected
    for r in results:
        assert r["model"] == "cct_2_3x2_32" and r["input"] == "16x16x1" and r["batch_size"] == 4
        assert len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
        assert r["median_s"] > 0 and r["img_per_s"] > 0 and r["tflops"] > 0 and r["macs_per_image"] > 0
        assert r["first_step_s"] > 0 and r["peak_tflops"] > 0 and r["peak_fraction"] > 0
        # %peak is against the model's own matmul shapes in the row's dtype, the square peak beside it
        key = (r["model"], r["input"], r["batch_size"], r["mode"], r["precision"])
        peak = next(p for p in report["model_peak"]
                    if (p["model"], p["input"], p["batch_size"], p["mode"], p["dtype"]) == key)  # fmt: skip
        assert r["peak_tflops"] == peak["tflops"] >= max(peak["start_tflops"], peak["end_tflops"]) * (1 - 1e-9)
        assert r["square_peak_tflops"] == report["matmul_peak"][r["precision"]]["tflops"]
        assert 0 < peak["gemm_share"] <= 1.0 and peak["gemms"][0]["count"] >= 1
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] > 0
    baseline = next(r for r in results if r["variant"] == "baseline")
    assert (baseline["precision"], baseline["channels_last"], baseline["attn_impl"]) == ("fp32", False, "explicit")
    fast_train = next(r for r in results if r["variant"] == "fast" and r["mode"] == "train")
    assert fast_train["channels_last"] and fast_train["attn_impl"] == "auto" and fast_train["fused_optimizer"]
    # a training step counts 3x the forward FLOPs of an inference step
    by_mode = {r["mode"]: r for r in results if r["variant"] == "baseline"}
    train_flops = by_mode["train"]["tflops"] * by_mode["train"]["median_s"]
    infer_flops = by_mode["infer"]["tflops"] * by_mode["infer"]["median_s"]
    assert train_flops == pytest.approx(3 * infer_flops)

    speedups = {(s["variant"], s["mode"]): s["speedup"] for s in report["speedups"]}
    assert set(speedups) == {("fast", "train"), ("fast", "infer")} and all(v > 0 for v in speedups.values())
    assert isinstance(report["warnings"], list) and all({"kind", "message"} <= set(w) for w in report["warnings"])
    printed = capsys.readouterr().out
    assert "ms/step" in printed and "fast" in printed and str(out) in printed and "model-shape peak" in printed
    assert printed.count("UNRELIABLE:") == len(report["warnings"]) + (1 if report["warnings"] else 0)


def test_measure_interleaved_alternates_variants():
    calls: list[str] = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    results = measure_interleaved(steps, torch.device("cpu"), warmup=2, repeats=3, steps_per_repeat=2)
    # warm-up a,b then a,b (memory), then three repeats of a,a,b,b
    assert calls == ["a", "b", "a", "b"] + ["a", "a", "b", "b"] * 3
    assert all(len(m.times_s) == 3 and m.median_s >= 0 for m in results.values())


def test_scaling_reports_tokens_batches_and_attention_memory(one_thread):
    config = BenchConfig(models=("cct_2_3x2_32",), batch_sizes=(2,), device="cpu", warmup=1, repeats=1,
                         scaling=True, scaling_sizes=(8, 16), scaling_batches=(2, 4), modes=("infer",))  # fmt: skip
    scaling = bench_scaling(config, torch.device("cpu"), quiet=True)
    assert [r["tokens"] for r in scaling["tokens"]] == [4, 16]  # (size / 4)^2 for CCT-2/3x2
    assert [r["batch_size"] for r in scaling["batch"]] == [2, 4]
    assert all(r["median_s"] > 0 and r["img_per_s"] > 0 for r in scaling["tokens"] + scaling["batch"])
    impls = [(r["tokens"], r["attn_impl"]) for r in scaling["attention_memory"]]
    assert sorted(impls) == [(4, "explicit"), (4, "sdpa"), (16, "explicit"), (16, "sdpa")]


def test_first_reaching_picks_first_epoch_over_target():
    accuracies = [40.0, 71.0, 65.0, 80.0]
    history = [{"epoch": e + 1, "epoch_seconds": 2.0, "val_top1": acc} for e, acc in enumerate(accuracies)]
    stamps = [3.0, 6.0, 9.0, 12.0]
    assert first_reaching(history, stamps, 70.0) == {"reached": True, "epoch": 2, "seconds": 6.0, "train_seconds": 4.0}
    assert first_reaching(history, stamps, 90.0)["reached"] is False


def test_time_to_accuracy_on_digits(tmp_path, one_thread):
    config = BenchConfig(time_to_accuracy=1.0, accuracy_dataset="digits", accuracy_epochs=1,
                         accuracy_samples_per_class=10, accuracy_output=str(tmp_path), device="cpu")  # fmt: skip
    result = bench_time_to_accuracy(config, torch.device("cpu"), quiet=True)
    assert result["reached"] and result["epoch"] == 1
    assert 0 < result["seconds"] <= result["total_seconds"]
    assert len(result["history"]) == 1 and result["history"][0]["val_top1"] >= 1.0


def test_bad_input_is_reported():
    assert parse_model_spec("cct_2_3x2_32:28x28x1").in_chans == 1
    assert parse_model_spec("cct_7_3x1_32").img_size == (32, 32)
    with pytest.raises(ValueError, match="HxWxC"):
        parse_model_spec("cct_2_3x2_32:28x28")
    with pytest.raises(ValueError, match="unknown variant"):
        resolve_variant("turbo")
    assert resolve_variant("fast+compile").compile and not VARIANTS["fast"].compile
    with pytest.raises(ValueError, match="warmup"):
        BenchConfig(warmup=0)
    with pytest.raises(ValueError, match="modes"):
        BenchConfig(modes=("fly",))
    with pytest.raises(ValueError, match="none only with"):
        BenchConfig(modes=())
    assert BenchConfig(modes=(), time_to_accuracy=50.0).throughput_modes == ()
    assert BenchConfig(modes=("latency", "infer")).throughput_modes == ("infer",)
    with pytest.raises(ValueError, match="latency_paths"):
        BenchConfig(latency_paths=("tensorrt",))
    assert config_from_args(parse(["--modes", "none", "--time-to-accuracy", "50"])).modes == ()
    assert resolve_variant("fast+cudagraphs").compile_mode == "reduce-overhead"
    assert resolve_variant("fast+compile").compile_mode == "default" and VARIANTS["fast"].compile_mode is None
    assert [v.name for v in BenchConfig(variants=("baseline", "fast"), compile=True).variant_list()] == [
        "baseline", "fast", "fast+compile",
    ]  # fmt: skip


def test_low_precision_weights_step_updates_fp32_masters_and_rounds_them_into_the_model():
    from compact_transformers.training.optim import MasterWeightOptimizer
    from compact_transformers.training.recipe import TrainConfig

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 3)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = MasterWeightOptimizer(model, TrainConfig(lr=1e-2, lr_base_batch=128, batch_size=128))
    model = model.to(torch.bfloat16)
    inputs, labels = torch.randn(16, 8, dtype=torch.bfloat16), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(inputs).float(), labels)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(m.dtype == torch.float32 for m in optimizer.masters)
    assert all(not torch.equal(m, s) for m, s in zip(optimizer.masters, start))  # the fp32 copies learned
    for m, p in zip(optimizer.masters, model.parameters()):
        assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), m.detach().to(torch.bfloat16))
    assert losses[-1] < losses[0]


def test_low_precision_weights_variant_runs_in_bench(one_thread):
    from compact_transformers.benchmark import ModelSpec, build_step

    spec = ModelSpec("cct_2_3x2_32", (16, 16), 1)
    for mode in ("train", "infer"):
        step = build_step(spec, VARIANTS["lp-weights"], mode, 4, torch.device("cpu"), torch.bfloat16)
        step()
        step()


def test_text_models_are_benched_in_sequences_per_second(one_thread):
    spec = parse_model_spec("text_cct_2_1x1:16")
    assert spec.is_text and spec.seq_len == 16 and spec.label == "L16" and spec.unit == "seq"
    assert parse_model_spec("text_transformer_2").seq_len == 128
    with pytest.raises(ValueError, match="NAME:L"):
        parse_model_spec("text_cct_2_1x1:16x16x1")
    config = BenchConfig(models=("text_cct_2_1x1:16",), batch_sizes=(4,), warmup=1, repeats=1, peak_sizes=(64,),
                         device="cpu")  # fmt: skip
    from compact_transformers.benchmark import bench_models

    records = bench_models(config, torch.device("cpu"), quiet=True)
    assert {(r["variant"], r["mode"]) for r in records} == {(v, m) for v in ("baseline", "fast") for m in ("train", "infer")}
    for r in records:
        assert r["unit"] == "seq" and r["samples_per_s"] > 0 and "img_per_s" not in r and r["macs_per_image"] > 0


# ------------------------------------------------------------------------------------ model-shape peak


def test_model_gemms_are_the_token_major_linear_layers_and_the_attention_matmuls():
    spec = parse_model_spec("cct_7_3x1_32")
    from compact_transformers.models import create_model

    model = create_model(spec.name, img_size=spec.img_size)
    tokens, dim, heads, layers = model.num_tokens, 256, 4, 7
    batch = 8
    infer = model_gemms(spec, batch, "infer")
    shapes = {(g.op, g.shapes[-2], g.shapes[-1]): n for g, n in infer.items()}
    assert shapes[("mm", (batch * tokens, dim), (dim, 3 * dim))] == layers  # qkv (no bias)
    assert shapes[("addmm", (batch * tokens, dim), (dim, 2 * dim))] == layers  # MLP ratio 2
    assert shapes[("bmm", (batch * heads, tokens, dim // heads), (batch * heads, dim // heads, tokens))] == layers
    assert shapes[("bmm", (batch * heads, tokens, tokens), (batch * heads, tokens, dim // heads))] == layers
    # the matmuls are nearly all of the counted FLOPs (one small convolution is the rest); training adds the
    # backward matmuls (input and weight gradients: twice the forward's), with transposed operands
    counted = 2 * benchmark._macs(spec) * batch
    infer_flops = sum(g.flops * n for g, n in infer.items())
    assert 0.97 * counted < infer_flops <= counted
    train = model_gemms(spec, batch, "train")
    assert sum(g.flops * n for g, n in train.items()) == pytest.approx(3 * infer_flops, rel=0.02)
    assert any(g.strides[0][0] == 1 for g in train if g.op == "mm")  # a transposed view (weight gradient)


def test_gemm_rate_and_model_peaks_weight_each_matmul_by_how_often_it_runs():
    big = Gemm("mm", ((100, 10), (10, 50)), ((10, 1), (50, 1)))  # 100,000 FLOPs
    small = Gemm("bmm", ((2, 10, 5), (2, 5, 10)), ((50, 5, 1), (50, 10, 1)))  # 2,000 FLOPs
    assert (big.flops, small.flops, small.label) == (100_000, 2_000, "2x10x5@5x10")
    counts = {big: 3, small: 10}
    seconds = {big: 1e-6, small: 1e-6}
    assert gemm_rate(counts, seconds) == pytest.approx((3 * 100_000 + 10 * 2_000) / 13e-6 / 1e12)
    plan = benchmark.ShapePlan({("m", "8x8x1", 4, "train"): counts}, (torch.float32,))
    start = {"fp32": {big: 1e-6, small: 4e-6}}
    end = {"fp32": {big: 2e-6, small: 1e-6}}  # each matmul's better time counts
    (peak,) = model_peaks(plan, start, end)
    assert peak["tflops"] == pytest.approx(gemm_rate(counts, {big: 1e-6, small: 1e-6}))
    assert peak["start_tflops"] == pytest.approx(gemm_rate(counts, start["fp32"]))
    assert peak["end_tflops"] == pytest.approx(gemm_rate(counts, end["fp32"]))
    assert peak["gemms"][0]["shape"] == "100x10@10x50" and peak["gemms"][0]["count"] == 3


# ------------------------------------------------------------------------------------------- warnings


def _report(load=(0.5, 0.5, 0.5), peak=(1.0, 1.0), times=(1.0, 1.0, 1.0), fraction=0.5) -> dict:
    row = {"model": "cct_2_3x2_32", "input": "28x28x1", "batch_size": 128, "mode": "train", "variant": "fast",
           "precision": "bf16", "times_s": list(times), "median_s": sorted(times)[len(times) // 2],
           "peak_fraction": fraction}  # fmt: skip
    return {
        "machine": {"threads": 2, "load_average_start": list(load), "load_average_end": [0.1, 0.1, 0.1]},
        "matmul_peak": {"bf16": {"tflops": max(peak), "start": {"tflops": peak[0]}, "end": {"tflops": peak[1]}}},
        "model_peak": [{"model": "cct_2_3x2_32", "input": "28x28x1", "batch_size": 128, "mode": "train",
                        "dtype": "bf16", "start_tflops": 1.0, "end_tflops": 1.1}],
        "results": [row],
    }  # fmt: skip


def test_find_warnings_flags_each_sign_of_contention():
    assert find_warnings(_report()) == []
    kinds = lambda report: [w["kind"] for w in find_warnings(report)]  # noqa: E731
    assert kinds(_report(load=(2.5, 1.0, 1.0))) == ["load"]  # above the 2 threads the bench uses
    assert kinds(_report(load=(2.0, 1.0, 1.0))) == []
    assert kinds(_report(peak=(1.0, 0.8))) == ["peak_drift"]  # moved 20%
    assert kinds(_report(peak=(1.0, 0.9))) == []
    assert kinds(_report(times=(1.0, 1.1, 1.3))) == ["spread"]  # (1.3 - 1.0) / 1.1 = 27%
    assert kinds(_report(times=(1.0, 1.1, 1.15))) == []
    assert kinds(_report(fraction=1.2)) == ["above_peak"]
    report = _report()
    report["model_peak"][0]["end_tflops"] = 0.5
    (warning,) = find_warnings(report)
    assert warning["kind"] == "peak_drift" and "model-shape" in warning["message"] and "50%" in warning["message"]


def _quiet_peaks(monkeypatch, load: float) -> None:
    """Fixed square peaks and a chosen load average: the warnings depend on nothing else in a latency run."""
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    peaks = {"fp32": {"tflops": 1.0, "by_size": {}}, "bf16": {"tflops": 2.0, "by_size": {}}}
    monkeypatch.setattr(benchmark, "measure_matmul_peak", lambda device, sizes: peaks)


@pytest.mark.parametrize("load", [0.1, 64.0])
def test_strict_exits_1_on_warnings_and_the_text_says_unreliable(tmp_path, capsys, monkeypatch, one_thread, load):
    _quiet_peaks(monkeypatch, load)
    out = tmp_path / "latency.json"
    args = parse(["--models", "cct_2_3x2_32:16x16x1", "--modes", "latency", "--latency-paths", "eager",
                  "--latency-samples", "3", "--latency-warmup", "1", "--threads", "1", "--device", "cpu",
                  "--output", str(out), "--quiet", "--strict"])  # fmt: skip
    code = run_bench(args)
    report = json.loads(out.read_text())
    printed = capsys.readouterr()
    if load > 1:
        assert code == 1 and [w["kind"] for w in report["warnings"]] == ["load", "load"]
        assert printed.out.count("UNRELIABLE:") == 3 and "--strict" in printed.err
    else:
        assert code == 0 and report["warnings"] == [] and "UNRELIABLE" not in printed.out
    assert report["results"] == [] and report["model_peak"] == []
    (eager,) = report["latency"]
    assert eager["path"] == "eager" and eager["batch_size"] == 1 and eager["samples"] == 3
    assert 0 < eager["min_ms"] <= eager["p50_ms"] <= eager["p90_ms"] and eager["speedup_vs_eager"] == 1.0


def test_format_report_marks_rows_and_prints_warnings_first():
    report = _report(times=(1.0, 1.1, 1.3))
    report["machine"].update(cpu="cpu", cpu_flags={}, torch="x", device="cpu", gpu=None, date="today")
    report["matmul_peak"]["bf16"]["start"]["tflops"] = report["matmul_peak"]["bf16"]["end"]["tflops"] = 1.0
    report["model_peak"] = []
    report["results"][0].update(samples_per_s=100.0, tflops=0.5, mem_delta_mb=None, square_peak_fraction=0.4)
    report["speedups"] = []
    report["warnings"] = find_warnings(report)
    text = format_report(report).splitlines()
    assert text[2].startswith("UNRELIABLE: cct_2_3x2_32 28x28x1 batch 128 train fast: its 3 repeats spread by 27%")
    assert next(line for line in text if line.startswith("cct_2_3x2_32")).endswith("!")
    assert text[-1].startswith("UNRELIABLE: 1 warning(s) above (rows marked !)")


# --------------------------------------------------------------------------- the fast variant is cct train's


def test_fast_variant_is_the_step_cct_train_runs(tmp_path, monkeypatch, one_thread):
    """`cct train --recipe paper` and the bench's fast variant build the same step: model, precision, layout,
    attention, optimizer kernel and settings, augmentation, mixing, loss (compared with step_settings)."""
    import compact_transformers.training.loop as loop
    from compact_transformers.cli import main

    built = {}

    class Captured(Exception):
        pass

    def capture(model, batch, tools, step):
        built.update(model=model, batch=batch, tools=tools)
        raise Captured

    monkeypatch.setattr(loop, "train_step", capture)
    with pytest.raises(Captured):
        main(["train", "--recipe", "paper", "--dataset", "digits", "--img-size", "16", "--batch-size", "16",
              "--epochs", "30", "--device", "cpu", "--output", str(tmp_path), "--quiet"])  # fmt: skip
    trained = step_settings(built["model"], built["tools"])
    device = torch.device("cpu")
    amp_dtype = benchmark._amp_dtype("auto", device)
    spec = ModelSpec("cct_2_3x2_32", (16, 16), 1)
    fast = build_train_parts(spec, VARIANTS["fast"], 16, device, amp_dtype)
    assert step_settings(fast.network, fast.tools) == trained
    assert fast.batch.inputs.dtype == built["batch"].inputs.dtype == torch.uint8
    # (digits are stored at 8x8; the augmentation resizes them to 16x16)
    assert fast.batch.inputs.shape[1] == built["batch"].inputs.shape[1]
    baseline = build_train_parts(spec, VARIANTS["baseline"], 16, device, amp_dtype)
    differs = {k for k, v in step_settings(baseline.network, baseline.tools).items() if v != trained[k]}
    assert {"attn_impl", "input_channels_last", "optimizer_defaults"} <= differs


# -------------------------------------------------------------------------------------------- latency


def test_percentile_interpolates_between_ranks():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile(list(range(11)), 90) == 9.0
    assert percentile([7.0], 90) == 7.0


def test_latency_notes_paths_that_cannot_run_and_times_the_others(monkeypatch, one_thread):
    from compact_transformers.errors import ConfigError
    from compact_transformers.integrations import export

    class Uncompilable(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.config = model.config

        def forward(self, *inputs):
            raise RuntimeError("inductor: no C++ compiler\nmore detail")

    def no_onnxruntime():
        raise ConfigError("running ONNX models needs onnxruntime: pip install 'compact-transformers[export]'")

    monkeypatch.setattr(torch, "compile", lambda model, **options: Uncompilable(model))
    monkeypatch.setattr(export, "_onnxruntime", no_onnxruntime)
    config = BenchConfig(models=("cct_2_3x2_32:16x16x1", "text_cct_2_1x1:16"), modes=("latency",), device="cpu",
                         latency_samples=4, latency_warmup=1)  # fmt: skip
    records = bench_latency(config, torch.device("cpu"), quiet=True)
    assert [(r["model"], r["path"]) for r in records] == [
        (m, p) for m in ("cct_2_3x2_32", "text_cct_2_1x1") for p in ("eager", "compile", "onnx")
    ]  # fmt: skip
    for r in records:
        if r["path"] == "eager":
            assert not r["skipped"] and r["samples"] == 4 and 0 < r["p50_ms"] <= r["p90_ms"]
        elif r["path"] == "compile":
            assert r["skipped"] and r["note"] == "skipped: RuntimeError: inductor: no C++ compiler"
        else:
            assert r["skipped"] and "onnxruntime" in r["note"] and "[export]" in r["note"]


def test_latency_with_test_time_views_predicts_as_cct_predict_does(monkeypatch, one_thread):
    """--latency-views 6 times the prediction of a small-recipe model: the image, its mirror and their shifted
    windows, all six in one forward pass of batch 6 (augment.STACK_VIEWS_UP_TO); a text model has one view."""
    from compact_transformers import augment

    passes = []
    real_views = augment.tta_views
    monkeypatch.setattr(augment, "tta_views", lambda batch, flip, shift=0: passes.append((flip, shift))
                        or real_views(batch, flip=flip, shift=shift))
    config = BenchConfig(models=("cct_2_3x2_32:16x16x1", "text_cct_2_1x1:16"), modes=("latency",), device="cpu",
                         latency_paths=("eager",), latency_samples=2, latency_warmup=1, latency_views=6)  # fmt: skip
    image, text = bench_latency(config, torch.device("cpu"), quiet=True)
    assert (image["views"], text["views"]) == (6, 1) and not image["skipped"]
    assert passes and set(passes) == {(True, 1)}
    report = _report(times=(1.0, 1.0, 1.0))
    report["machine"].update(cpu="cpu", cpu_flags={}, torch="x", device="cpu", gpu=None, date="today")
    report["results"][0].update(samples_per_s=100.0, tflops=0.5, mem_delta_mb=None, square_peak_fraction=0.4)
    report.update(model_peak=[], speedups=[], warnings=[], latency=[image, text])
    lines = format_report(report).splitlines()
    header = next(line for line in lines if "p50 ms" in line)
    image_row, text_row = [line for line in lines if line.split()[2:3] == ["eager"]]
    assert header.split()[4] == "views" and (image_row.split()[4], text_row.split()[4]) == ("6", "1")
    with pytest.raises(ValueError, match="latency_views must be one of"):
        BenchConfig(latency_views=3)


@pytest.mark.slow
def test_latency_through_torch_compile_and_onnx_runtime(one_thread):
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    config = BenchConfig(models=("cct_2_3x2_32:16x16x1",), modes=("latency",), device="cpu", latency_samples=3,
                         latency_warmup=1)  # fmt: skip
    records = {r["path"]: r for r in bench_latency(config, torch.device("cpu"), quiet=True)}
    assert not any(r["skipped"] for r in records.values()), [r["note"] for r in records.values()]
    assert records["onnx"]["export_s"] > 0 and records["onnx"]["device"] == "cpu"
    assert records["compile"]["first_call_s"] > records["compile"]["p50_ms"] / 1e3  # the first call compiles


@pytest.mark.slow
def test_cudagraphs_variant_steps_on_cpu(one_thread):
    """+cudagraphs compiles with mode reduce-overhead; without CUDA it is a plain compiled step."""
    spec = ModelSpec("cct_2_3x2_32", (16, 16), 1)
    step = benchmark.build_step(spec, resolve_variant("fast+cudagraphs"), "infer", 4, torch.device("cpu"),
                                torch.bfloat16)  # fmt: skip
    step()
    step()


# ---------------------------------------------------------------------------------------- gpu_check.sh


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu_with_tiny_settings(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --tiny: every step's JSON or run directory, and a summary."""
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("CCT_CHECK_COMPILE", None)
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--device", "cpu", "--tiny",
         "--fashion-mnist", str(tmp_path / "absent")],  # digits instead: seconds, not a minute
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["tiny"] is True
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("train", "ok"), ("throughput", "ok"), ("compiled", "skipped"), ("train-b512", "ok"), ("latency", "ok"),
        ("accuracy", "ok"),
    ]  # fmt: skip
    for name, batch_size in (("train", 64), ("train-b512", 512)):  # digits' recipe batch, then --batch-size 512
        final = json.loads((out / name / "final.json").read_text())
        assert final["val"]["count"] > 0 and 0 <= final["val"]["top1"] <= 100
        assert f"steps of {batch_size}" in (out / f"{name}.log").read_text()
        assert "time limit 0.1 min" in (out / f"{name}.log").read_text()
    throughput = json.loads((out / "throughput.json").read_text())
    assert throughput["schema"] == "cct-bench/2" and throughput["machine"]["device"] == "cpu"
    assert {r["variant"] for r in throughput["results"]} == {
        "baseline", "amp-nchw", "fp32-cl", "fast", "fast-explicit"}
    assert "warnings" in throughput and throughput["model_peak"]
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["results"] == [] and accuracy["time_to_accuracy"]["dataset"] == "digits"
    assert accuracy["time_to_accuracy"]["reached"]
    latency = json.loads((out / "latency.json").read_text())
    assert [r["path"] for r in latency["latency"]] == ["eager", "onnx"]
    assert (out / "throughput.log").read_text().strip()


# ---------------------------------------------------------------------------------------- text_baseline.py


def test_text_baseline_writes_each_fold_of_its_cross_validation_as_a_split(tmp_path, monkeypatch):
    """--fold K tests on the K-th fold of the 10-fold CV the script scores: the ten test parts are disjoint,
    cover every file and keep the classes' shares; the split written is that fold, and its accuracy is the one
    the CV prints for it."""
    pytest.importorskip("sklearn")
    import importlib.util

    script = REPO / "benchmarks" / "text_baseline.py"
    spec = importlib.util.spec_from_file_location("text_baseline", script)
    baseline = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "text_baseline", baseline)  # its dataclass looks its module up
    spec.loader.exec_module(baseline)
    words = {"sport": "goal match team league cup win", "tech": "phone chip software web data code"}
    root = tmp_path / "corpus"
    for name, vocabulary in words.items():
        (root / name).mkdir(parents=True)
        for i in range(30):
            (root / name / f"{i:03d}.txt").write_text(f"{vocabulary.split()[i % 6]} {vocabulary} story {i}")
    corpus = baseline.read_corpus(root)
    tested = []
    for fold in range(baseline.CV_FOLDS):
        train, test = baseline.fold_indices(corpus, fold=fold, seed=0)
        assert len(test) == 6 and len(train) == 54 and not set(train) & set(test)
        assert (corpus.labels[test] == 0).sum() == 3  # stratified
        tested += test.tolist()
    assert sorted(tested) == list(range(60))
    with pytest.raises(SystemExit, match="--fold must be 0 to 9, got 10"):
        baseline.fold_indices(corpus, fold=10, seed=0)

    out = tmp_path / "fold3"
    done = subprocess.run([sys.executable, str(script), "--data", str(root), "--fold", "3", "--write-split", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    _, test = baseline.fold_indices(corpus, fold=3, seed=0)
    written = sorted(p.relative_to(out / "test") for p in (out / "test").glob("*/*.txt"))
    assert written == sorted(corpus.paths[i].relative_to(root) for i in test)
    assert len(list((out / "train").glob("*/*.txt"))) == 54
    accuracy = float(done.stdout.split("test accuracy: ")[1].split("%")[0])
    per_fold = done.stdout.split("(folds 0-9: ")[1].split(")")[0].split()
    assert accuracy == pytest.approx(float(per_fold[3]), abs=0.01)


# ---------------------------------------------------------------------------------------- view_passes.py


def test_view_passes_writes_both_timings_for_each_model_and_batch(tmp_path):
    """benchmarks/view_passes.py writes a row per model and batch with both timings and their ratio, and the
    stacking limit it compared against one pass per view."""
    out = tmp_path / "passes.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "view_passes.py"), "--models", "cct_2_3x2_32",
                           "--batch-sizes", "1,20", "--repeats", "2", "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    from compact_transformers import augment

    result = json.loads(out.read_text())
    assert result["stack_views_up_to"] == augment.STACK_VIEWS_UP_TO
    assert [(row["model"], row["batch"]) for row in result["rows"]] == [("cct_2_3x2_32", 1), ("cct_2_3x2_32", 20)]
    for row in result["rows"]:
        assert row["stacked_ms"] > 0 and row["view_by_view_ms"] > 0
        assert row["speedup"] == pytest.approx(row["view_by_view_ms"] / row["stacked_ms"], abs=0.01)
    assert done.stdout.count("six views stacked") == 2


# ------------------------------------------------------------------------------------- length_buckets.py


def test_length_buckets_times_both_ways_over_the_same_texts(tmp_path):
    """benchmarks/length_buckets.py trains an epoch each way and reports the token slots (fewer when grouped
    by length: the texts' lengths are skewed) and the seconds, with their ratios."""
    out = tmp_path / "buckets.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "length_buckets.py"), "--model", "text_cct_2_1x1",
                           "--seq-len", "64", "--texts", "320", "--batch-size", "16", "--repeats", "1",
                           "--json", str(out)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    slots, seconds = result["slots"], result["epoch_seconds"]
    assert result["real_tokens"] <= slots["grouped"] < slots["shuffled"] <= 320 * 64
    assert result["slots_ratio"] == pytest.approx(slots["shuffled"] / slots["grouped"])
    assert seconds["grouped"] > 0 and result["speedup"] == pytest.approx(seconds["shuffled"] / seconds["grouped"])
    assert "fewer slots" in done.stdout
