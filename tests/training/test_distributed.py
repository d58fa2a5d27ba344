"""Distributed training: single-process no-ops, how a global batch is sharded, and real multi-process gloo runs
of `cct train` under torchrun on the CPU: the format of a 2-process run, its equivalence with one process on the
same global batches, a kill (and a SIGTERM) then `--resume` under DDP, and two "nodes" on localhost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compact_transformers.cli import main
from compact_transformers.data import ImageDataset, ImageSplit
from compact_transformers.errors import DatasetError
from compact_transformers.training import distributed
from compact_transformers.training.batches import DeviceBatches
from compact_transformers.training.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    cleanup,
    from_rank0,
    gather_objects,
    setup_distributed,
)
from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.runtime import select_device

TINY = ["--samples-per-class", "5", "--epochs", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]
# everything random off, fp32: 2 processes x 8 images must train what 1 process x 16 images trains
DETERMINISTIC = ["--no-amp", "--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--hflip", "0",
                 "--translate", "0", "--scale", "1", "1", "--ratio", "1", "1", "--drop-path", "0", "--drop", "0",
                 "--attn-drop", "0"]  # fmt: skip
TIMING_KEYS = {"img_per_s", "epoch_seconds"}
# one thread per process: runs are bit-reproducible, and two processes share the machine's cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
for _name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CCT_KILL_AT", "CCT_KILL_SIGNAL"):
    ENV.pop(_name, None)


# ------------------------------------------------------------------------------------- single process


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed(torch.device("cpu"))
    assert info == DistInfo() and not info.enabled and info.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_distributed(torch.device("cpu")) == DistInfo()
    assert not torch.distributed.is_initialized()


def test_single_process_reductions_are_no_ops() -> None:
    info = DistInfo()
    tensors = {"a": torch.tensor(2.0), "b": torch.arange(3.0)}
    out = all_reduce_sum(tensors, info)
    assert out is tensors and out["a"].item() == 2.0 and out["b"].tolist() == [0.0, 1.0, 2.0]
    assert any_rank(True, info) and not any_rank(False, info)
    assert from_rank0({"epochs": 3}, info) == {"epochs": 3}
    assert gather_objects("state", info) == ["state"]
    cleanup(info)


@pytest.mark.parametrize("host_group", [None, "gloo group beside nccl"])
def test_any_rank_asks_the_other_processes_on_the_host(monkeypatch: pytest.MonkeyPatch, host_group) -> None:
    # asked after every step: a flag on the GPU would make each step wait for the device
    monkeypatch.setattr(distributed, "_host_group", host_group)
    calls = []

    def all_reduce(tensor: torch.Tensor, op, group=None) -> None:  # noqa: ANN001 - as torch's
        calls.append((tensor.device.type, group))
        tensor += 1.0  # another process's flag: true

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    assert any_rank(False, DistInfo(rank=0, world_size=2))
    assert calls == [("cpu", host_group)]


def test_rank_properties() -> None:
    worker = DistInfo(rank=1, world_size=2, local_rank=1)
    assert worker.enabled and not worker.is_main
    assert DistInfo(rank=0, world_size=2).is_main
    # the second node's first process: its own GPU 0, but not the main process
    assert not DistInfo(rank=4, world_size=8, local_rank=0).is_main


def test_each_process_picks_the_gpu_of_its_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("RANK", "5")  # the global rank on a second node: never a device index
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert select_device("auto") == torch.device("cuda", 1)
    assert select_device("cuda") == torch.device("cuda", 1)
    assert select_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept


# ------------------------------------------------------------------------------------ global batches


def numbered_images(count: int) -> ImageDataset:
    """A dataset whose labels number its training images, so that a batch says which images it holds."""
    train = ImageSplit(torch.zeros(count, 1, 2, 2, dtype=torch.uint8), torch.arange(count))
    val = ImageSplit(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64))
    return ImageDataset("numbered", train, val, None, [str(i) for i in range(count)], (0.5,), (0.25,))


def shards(data: ImageDataset, batch_size: int, world_size: int, epoch: int, first_step: int = 0) -> list:
    """Each step's batch as the `world_size` processes see it together (their labels, in rank order)."""
    config = TrainConfig(batch_size=batch_size, seed=3)
    per_rank = [DeviceBatches(data, config, torch.device("cpu"), DistInfo(rank, world_size, rank))
                for rank in range(world_size)]  # fmt: skip
    steps = zip(*(list(batches.epoch(epoch, first_step)) for batches in per_rank), strict=True)
    return [torch.cat([batch.labels for batch in step]).tolist() for step in steps]


@pytest.mark.parametrize("count", [50, 15])
def test_processes_share_out_the_global_batches_of_one_process(count: int) -> None:
    data = numbered_images(count)
    for epoch in (0, 1):
        together = shards(data, 8, 2, epoch)
        images = [i for step in together for i in step]
        assert len(set(images)) == len(images), "a sample twice in one epoch"
        if count == 50:  # 2 x 8 and 4 x 4 see the batches of 1 x 16: the first 48 images of the epoch's order
            assert together == shards(data, 16, 1, epoch) == shards(data, 4, 4, epoch) and len(together) == 3
        else:  # 15 images: 2 x 7 take the first 14, which one process with a batch of 14 sees
            assert together == shards(data, 14, 1, epoch) and len(together) == 1
        # a resumed epoch continues with the same batches
        assert shards(data, 8, 2, epoch, first_step=1) == together[1:]
    assert shards(data, 16, 1, 0) != shards(data, 16, 1, 1), "each epoch has its own order"


def test_a_small_split_shrinks_every_process_batch_alike() -> None:
    config = TrainConfig(batch_size=8)
    batches = [DeviceBatches(numbered_images(15), config, torch.device("cpu"), DistInfo(rank, 2, rank))
               for rank in (0, 1)]  # fmt: skip
    # 15 images for 2 x 8: 7 per process, and the learning rate scales with the 14 images a step uses
    assert [(b.local_batch, b.global_batch, b.steps_per_epoch) for b in batches] == [(7, 14, 1)] * 2
    with pytest.raises(DatasetError, match="2 training sample.* for 4 process"):
        DeviceBatches(numbered_images(2), config, torch.device("cpu"), DistInfo(0, 4, 0))


def test_batches_of_data_held_on_a_device_are_cut_without_waiting_for_it() -> None:
    """Each step's sample indices go to the device queued, and a text batch's longest text is read from the
    lengths kept on the host: no blocking copy, no value read back (the meta device shows both)."""
    from device_waits import DeviceWaits

    from compact_transformers.data.text import TextDataset, TextSplit, Vocabulary

    lengths = torch.tensor([3, 9, 5, 2, 7, 4, 6, 8])
    ids = torch.ones(8, 10, dtype=torch.int64)
    split = TextSplit(ids, lengths, torch.arange(8) % 2)
    texts = TextDataset("texts", split, split, None, ["a", "b"], Vocabulary(["<unk>", "<pad>", "w"]), 10)
    config = TrainConfig(batch_size=4, seed=1)
    meta = torch.device("meta")
    on_meta = [DeviceBatches(numbered_images(8), config, meta, DistInfo()), DeviceBatches(texts, config, meta, DistInfo())]
    with DeviceWaits() as seen:
        image_batches, text_batches = (list(batches.epoch(0, 0)) for batches in on_meta)
    assert seen.waits == []
    assert [batch.inputs.device.type for batch in image_batches + text_batches] == ["meta"] * 4
    on_cpu = list(DeviceBatches(texts, config, torch.device("cpu"), DistInfo()).epoch(0, 0))
    # the same batches as on the CPU, each cut to its longest text
    assert [b.inputs.shape[1] for b in on_cpu] == [int(b.mask.sum(dim=1).max()) for b in on_cpu] != [10, 10]
    assert [b.inputs.shape[1] for b in text_batches] == [b.inputs.shape[1] for b in on_cpu]


# --------------------------------------------------------------------------------- torchrun on the CPU


def torchrun(*args: str, nproc: int = 2, launch: tuple[str, ...] = ("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc-per-node", str(nproc), *args]


def run(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or ENV)


def records(run_dir: Path, timings: bool = True) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if timings or k not in TIMING_KEYS} for line in lines]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """An uninterrupted 2-process run with the tiny digits options (augmentation and mixing on)."""
    output = tmp_path_factory.mktemp("ddp")
    result = run(torchrun("-m", "compact_transformers.cli", "train", *TINY, "--output", str(output)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    runs = list(output.iterdir())
    assert len(runs) == 1, f"only rank 0 writes a run directory, got {runs}"
    return result, runs[0]


@pytest.mark.slow
def test_two_process_gloo_training_matches_the_single_process_format(ddp_reference, tmp_path: Path) -> None:
    result, ddp_run = ddp_reference
    assert "device cpu x2" in result.stderr  # really two processes, one log (rank 0's)
    assert result.stderr.count("run directory:") == 1
    ddp_records = records(ddp_run)
    assert [r["epoch"] for r in ddp_records] == [1, 2]
    assert (ddp_run / "final.json").exists() and (ddp_run / "model").is_dir()
    state = torch.load(ddp_run / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and isinstance(state["rng"], list) and len(state["rng"]) == 2
    # the global batch is 2 x 8 over 50 images: 3 steps of 16 images, all counted
    assert json.loads((ddp_run / "final.json").read_text())["val"]["count"] == 359

    single_output = tmp_path / "single"
    assert main(["train", *TINY, "--output", str(single_output), "--name", "single"]) == 0
    single_records = records(single_output / "single")
    for ddp_record, single_record in zip(ddp_records, single_records, strict=True):
        assert ddp_record.keys() == single_record.keys()
        assert all(type(ddp_record[k]) is type(single_record[k]) for k in ddp_record)


# SeqPool's bias shifts every token's score alike, and the softmax over tokens ignores a shift: its gradient is 0
# in exact arithmetic, rounding noise in fp32. Adam divides a gradient by its own magnitude, so that noise moves
# it by up to lr per step, differently for any other summation order (8 + 8 images against 16). It changes no
# output of the model (the losses below agree); every other weight must agree to fp32 rounding.
GRADIENT_FREE = {"classifier.attention_pool.bias"}


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_process_with_the_global_batch(tmp_path: Path) -> None:
    options = [*TINY, *DETERMINISTIC]
    ddp = run(torchrun("-m", "compact_transformers.cli", "train", *options, "--output", str(tmp_path), "--name", "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    one = options[:]
    one[one.index("--batch-size") + 1] = "16"
    single = run([sys.executable, "-m", "compact_transformers.cli", "train", *one, "--output", str(tmp_path),
                  "--name", "single"])  # fmt: skip
    assert single.returncode == 0, single.stderr[-4000:]
    # the same steps of the same global batch, in fp32, on both
    assert "device cpu x2, fp32; 2 epochs x 3 steps of 16" in ddp.stderr
    assert "device cpu x1, fp32; 2 epochs x 3 steps of 16" in single.stderr

    ddp_records, single_records = records(tmp_path / "ddp", timings=False), records(tmp_path / "single", timings=False)
    assert [r["epoch"] for r in ddp_records] == [r["epoch"] for r in single_records] == [1, 2]
    for ddp_record, single_record in zip(ddp_records, single_records, strict=True):
        assert ddp_record["lr"] == single_record["lr"]  # scaled with the global batch, 16 on both
        for key in ddp_record.keys() - {"epoch", "lr"}:
            assert ddp_record[key] == pytest.approx(single_record[key], rel=1e-6, abs=1e-6), key

    ddp_weights, single_weights = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    assert ddp_weights.keys() == single_weights.keys() and GRADIENT_FREE <= ddp_weights.keys()
    for name in sorted(ddp_weights.keys() - GRADIENT_FREE):
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=0, atol=1e-5, msg=name)


def assert_resumed_like(reference: Path, run_dir: Path) -> None:
    """Every epoch recorded once, with the reference's values, and bit-identical final weights."""
    assert [r["epoch"] for r in records(run_dir)] == [1, 2], "every epoch exactly once"
    assert records(run_dir, timings=False) == records(reference, timings=False)
    ours, theirs = weights(run_dir), weights(reference)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, f"final weights differ from the uninterrupted run: {different}"
    final, expected = (json.loads((d / "final.json").read_text()) for d in (run_dir, reference))
    assert final["val"] == expected["val"]
    assert not [p.name for p in run_dir.rglob(".*")], "temporary files left behind"


def resume(run_dir: Path) -> None:
    resumed = run(torchrun("-m", "compact_transformers.cli", "train", "--resume", str(run_dir), "--quiet"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "device cpu x2" in resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["KILL", "TERM"])
def test_a_ddp_run_killed_after_its_first_checkpoint_resumes_to_the_same_weights(
    signal_name: str, ddp_reference, tmp_path: Path
) -> None:
    # rank 0, which writes the checkpoints, signals itself once `last` of epoch 1 is in place: SIGKILL takes down
    # the run (torchrun stops rank 1); SIGTERM stops both ranks after the next step, with a mid-epoch checkpoint
    env = {**ENV, "CCT_KILL_AT": "last-swapped@1", "CCT_KILL_SIGNAL": signal_name}
    killed = run(torchrun("-m", "compact_transformers.cli", "train", *TINY, "--output", str(tmp_path), "--name", "run"),
                 env=env)  # fmt: skip
    assert killed.returncode != 0, killed.stderr[-2000:]
    run_dir = tmp_path / "run"
    state = torch.load(run_dir / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert not (run_dir / "final.json").exists()
    if signal_name == "KILL":  # killed before epoch 1's record reached metrics.jsonl: the checkpoint has it
        assert "SIGKILL" in killed.stderr, killed.stderr[-2000:]
        assert (state["epoch"], state["step_in_epoch"]) == (1, 0) and records(run_dir) == []
    else:  # both ranks stopped at the same step of epoch 2; the epoch's running sums are kept
        assert "interrupted: saved" in killed.stderr
        assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
        assert state["partial"]["count"].item() == 16  # the running sums of the step done, over both ranks
        assert [r["epoch"] for r in records(run_dir)] == [1]
    resume(run_dir)
    assert_resumed_like(ddp_reference[1], run_dir)


def stopped_child(parent: int) -> int | None:
    """The pid of a stopped (SIGSTOP) child process of ``parent``, if any (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process has gone
            continue
        if fields[0] == "T" and int(fields[1]) == parent:
            return int(stat.parent.name)
    return None


def has_pending(pid: int, sig: signal.Signals) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    pending = (int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:")))
    return any(mask & (1 << (sig - 1)) for mask in pending)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120) -> object:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert process.poll() is None, f"torchrun ended first: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through Linux /proc")
def test_sigterm_to_the_torchrun_agent_saves_and_resumes_to_the_same_weights(ddp_reference, tmp_path: Path) -> None:
    # rank 0 stops itself (SIGSTOP) after epoch 1's checkpoint, so the SIGTERM surely comes mid-run; torchrun
    # passes it on to both workers, and rank 0 continues once it is pending there
    env = {**ENV, "CCT_KILL_AT": "last-swapped@1", "CCT_KILL_SIGNAL": "STOP"}
    command = torchrun("-m", "compact_transformers.cli", "train", *TINY, "--output", str(tmp_path), "--name", "run")
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        rank0 = wait_for(lambda: stopped_child(agent.pid), agent)
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: has_pending(rank0, signal.SIGTERM), agent, timeout=30)
        os.kill(rank0, signal.SIGCONT)
        _, stderr = agent.communicate(timeout=120)
    finally:
        agent.kill()
    assert agent.returncode != 0
    assert "interrupted: saved" in stderr, stderr[-2000:]  # a mid-epoch checkpoint, not a kill
    run_dir = tmp_path / "run"
    assert [r["epoch"] for r in records(run_dir)] == [1]
    resume(run_dir)
    assert_resumed_like(ddp_reference[1], run_dir)


# Runs a worker of `cct train` and writes what the process group told it (rank, local rank, device) to a file.
REPORTING_WORKER = '''
import json, os, sys
from pathlib import Path
from compact_transformers.cli import main
from compact_transformers.training import loop

def reporting_setup(device):
    info = setup(device)
    report = {"env": {k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")},
              "rank": info.rank, "local_rank": info.local_rank, "world_size": info.world_size,
              "is_main": info.is_main, "device": str(device)}
    (Path(sys.argv[1]) / f"rank{info.rank}.json").write_text(json.dumps(report))
    return info

setup, loop.setup_distributed = loop.setup_distributed, reporting_setup
sys.exit(main(sys.argv[2:]))
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["c10d", "static"])
def test_two_nodes_on_localhost_write_one_run_directory(rendezvous: str, tmp_path: Path) -> None:
    worker, reports, output = tmp_path / "worker.py", tmp_path / "reports", tmp_path / "runs"
    worker.write_text(REPORTING_WORKER)
    reports.mkdir()
    if rendezvous == "c10d":  # elastic: the rendezvous numbers the nodes (and ignores --node-rank)
        launch = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                  "--rdzv-id", f"cct-test-{os.getpid()}"]  # fmt: skip
    else:  # static: --node-rank 0 holds rank 0
        launch = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    started = {  # the second node first: its rank cannot come from the order of arrival
        node: subprocess.Popen(torchrun(str(worker), str(reports), "train", *TINY, "--output", str(output), nproc=1,
                                        launch=("--nnodes", "2", *launch, "--node-rank", str(node))),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for node in (1, 0)
    }  # fmt: skip
    agents = [started[0], started[1]]
    try:
        outputs = [agent.communicate(timeout=300) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for agent, (_, stderr) in zip(agents, outputs):
        assert agent.returncode == 0, stderr[-4000:]

    seen = sorted((json.loads(path.read_text()) for path in reports.iterdir()), key=lambda r: r["rank"])
    assert [r["rank"] for r in seen] == [0, 1] and [r["is_main"] for r in seen] == [True, False]
    assert sorted(int(r["env"]["GROUP_RANK"]) for r in seen) == [0, 1], "one process on each node"
    for report in seen:  # each node's only process: local rank 0, whatever its global rank
        assert report["env"]["RANK"] == str(report["rank"]) and report["world_size"] == 2
        assert report["env"]["LOCAL_RANK"] == "0" and report["local_rank"] == 0 and report["device"] == "cpu"

    runs = list(output.iterdir())
    assert len(runs) == 1, f"only rank 0 writes a run directory, got {runs}"
    assert [r["epoch"] for r in records(runs[0])] == [1, 2]
    assert (runs[0] / "final.json").exists()
    logged = [stderr.count("run directory:") for _, stderr in outputs]  # rank 0's log, through its node's agent
    assert sorted(logged) == [0, 1]
    if rendezvous == "static":
        assert logged == [1, 0], "rank 0 runs on the node of --node-rank 0"
