"""Smoke tests of `cct bench` (benchmark.py): tiny models, 1-2 repeats, schema and sanity, no speed claims."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from compact_transformers.benchmark import (
    VARIANTS,
    BenchConfig,
    add_bench_arguments,
    bench_scaling,
    bench_time_to_accuracy,
    first_reaching,
    measure_interleaved,
    parse_model_spec,
    resolve_variant,
    run_bench,
)


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
    assert report["schema"] == "cct-bench/1"
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
    printed = capsys.readouterr().out
    assert "ms/step" in printed and "fast" in printed and str(out) in printed


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
