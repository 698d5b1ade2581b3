"""Training on two processes (torchrun, gloo on the CPU) against one process with the same global batch.

The runs use a tiny synthetic config in deterministic mode whose loss is exactly the mean of the
ranks' losses (see `embedseg.engine.trainer.TrainingRun`): every image holds an instance (the
discriminative loss averages over such images), all images have one size and no pixel is ignored
(cross_entropy averages over pixels), there is no seediness term, no augmentation (each rank draws
its own), and the network normalises with GroupNorm (per image, so no batch statistics to share).
Two processes then differ from one only in the order of float sums: the loss of each rank's half
batch and the all-reduce of the gradients add in another order than one backward over the whole
batch. AdamW divides each gradient by its own running scale, so a relative difference of ~1e-7 in
a gradient moves a weight by ~1e-7 * lr per step: weights are compared to 1e-5 absolute, losses to
1e-5 relative, over 12 steps.

Each rank trains into its own --out (run_rank.py below): a file a rank other than 0 wrote would
land in rank1/, which must not exist.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from embedseg.config import ConfigError, load_config
from embedseg.engine.checkpoint import load_checkpoint
from embedseg.engine.trainer import epoch_loader, sync_batch_norm, train

REPO = Path(__file__).resolve().parents[1]
STEPS = 12
CONFIG = f"""
name: two
seed: 5
data:
  dataset: {{name: synthetic, size: 32, num_images: 9, min_objects: 2, max_objects: 3, min_radius: 3, max_radius: 6}}
  split_params: {{val: {{num_images: 2}}}}
  flip: false
  rot90: false
model: {{name: deeplab, backbone: resnet18, width: 0.125, output_stride: 16, embedding_dim: 8}}
loss:
  embedding: {{name: discriminative, weight: 1.0}}
  semantic: {{name: cross_entropy, weight: 1.0}}
train: {{steps: {STEPS}, batch_size: 4, log_every: 1, warmup_steps: 1, checkpoint_every: 2, eval_every: 6,
         deterministic: true, threads: 1}}
grouping:
  components: {{min_size: 5}}
"""
# Runs `embedseg train` on each rank with --out <base>/rank<RANK>, after noting its process id in
# <base>/pids/; `--nan-at STEP` registers a loss term that is NaN on rank 1 at that step only.
RUN_RANK = """
import os, sys
import torch
from embedseg.cli import main
from embedseg.losses import LOSSES

base, rank = sys.argv[1], os.environ["RANK"]
args = sys.argv[2:]
if args[0] == "--nan-at":
    nan_step, args = int(args[1]), args[2:]

    @LOSSES.register("nan_on_rank1")
    class NanOnRank1(torch.nn.Module):
        inputs = ("outputs.embedding",)
        calls = 0

        def forward(self, embedding):
            NanOnRank1.calls += 1
            bad = rank == "1" and NanOnRank1.calls == nan_step
            return {"loss": embedding.mean() * 0 + (float("nan") if bad else 0.0)}

os.makedirs(f"{base}/pids", exist_ok=True)
with open(f"{base}/pids/{rank}", "w") as f:
    f.write(str(os.getpid()))
sys.exit(main(["train", *args, "--out", f"{base}/rank{rank}", "--no-eval"]))
"""
TIMING = ("images_per_s", "elapsed_s")
PER_PROCESS = ("processes", "batch_per_process")
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    (folder / "two.yaml").write_text(CONFIG)
    (folder / "run_rank.py").write_text(RUN_RANK)
    return folder


def launch(files, processes: int, base: Path, *args, wait: bool = True):
    """run_rank.py on `processes` ranks (torchrun on a free port): finished (CompletedProcess) or running (Popen)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(files / "run_rank.py"), str(base), *map(str, args)]
    if wait:
        return subprocess.run(command, env=ENV, cwd=base.parent, capture_output=True, text=True, timeout=300,
                              check=False)
    return subprocess.Popen(command, env=ENV, cwd=base.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def records(run_dir: Path, drop=TIMING) -> list[dict]:
    path = run_dir / "log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines if line.endswith("}")]


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_close_runs(ours: Path, theirs: Path) -> None:
    """Every step's loss terms, learning rate and gradient norm to 1e-5 relative, the weights to 1e-5. The
    validation at step 6 (each process runs its share of the images) is logged once; its AP is still 0
    this early, so that it equals one process's is shown by the evaluation's own tests."""
    a, b = records(ours, TIMING + PER_PROCESS), records(theirs, TIMING + PER_PROCESS)
    assert [r["step"] for r in a if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in a if "val_AP" in r] == [r["step"] for r in b if "val_AP" in r] == [6]
    for mine, other in zip(a, b):
        assert mine == pytest.approx(other, rel=1e-5)
    mine, other = weights(ours), weights(theirs)
    assert list(mine) == list(other)  # saved without DDP's "module." prefix
    for key in other:
        torch.testing.assert_close(mine[key], other[key], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    base = tmp_path_factory.mktemp("one")
    process = launch(files, 1, base, files / "two.yaml")
    assert process.returncode == 0, process.stderr
    return base / "rank0"


@pytest.fixture(scope="module")
def two_processes(files, tmp_path_factory):
    base = tmp_path_factory.mktemp("two")
    process = launch(files, 2, base, files / "two.yaml")
    assert process.returncode == 0, process.stderr
    return base


def test_two_processes_train_as_one_process_on_the_same_global_batch(one_process, two_processes):
    run_dir = two_processes / "rank0"
    assert_close_runs(run_dir, one_process)
    first = records(run_dir)[0]
    assert (first["processes"], first["batch_size"], first["batch_per_process"]) == (2, 4, 2)


def test_only_rank_0_writes(one_process, two_processes):
    assert not (two_processes / "rank1").exists()
    written = sorted(p.relative_to(two_processes / "rank0") for p in (two_processes / "rank0").rglob("*"))
    assert written == sorted(p.relative_to(one_process) for p in one_process.rglob("*"))
    assert [r["step"] for r in records(two_processes / "rank0") if "loss" in r] == list(range(1, STEPS + 1))  # one writer


def stop_rank(process, base: Path, rank: int, step: int) -> str:
    """SIGTERM to `rank` alone once rank 0 has logged `step`; torchrun's stderr."""
    while process.poll() is None:
        logged = records(base / "rank0")
        if logged and logged[-1]["step"] >= step:
            os.kill(int((base / "pids" / str(rank)).read_text()), signal.SIGTERM)
            break
        time.sleep(0.01)
    return process.communicate(timeout=300)[1]


@pytest.mark.parametrize(("before", "after"), [(2, 2), (1, 2), (2, 1)])
def test_a_run_stopped_by_a_signal_to_one_rank_resumes_on_any_number_of_processes(files, tmp_path, before, after,
                                                                                  one_process, two_processes):
    config = files / "two.yaml"
    stderr = stop_rank(launch(files, before, tmp_path, config, wait=False), tmp_path, rank=before - 1, step=1)
    assert "stopped by SIGTERM" in stderr  # on the last rank: every rank stops after the same step
    stopped = load_checkpoint(tmp_path / "rank0" / "checkpoints" / "last.pt")["step"]
    assert stopped < STEPS
    assert [r["step"] for r in records(tmp_path / "rank0") if "loss" in r] == list(range(1, stopped + 1))
    resumed = launch(files, after, tmp_path, config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "rank1").exists()
    uninterrupted = two_processes / "rank0" if before == 2 else one_process
    if before == after:  # every rank's RNG states come back: exactly the uninterrupted run
        assert records(tmp_path / "rank0", TIMING) == records(uninterrupted, TIMING)
        ours, theirs = weights(tmp_path / "rank0"), weights(uninterrupted)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    else:
        assert_close_runs(tmp_path / "rank0", uninterrupted)


def test_a_nonfinite_loss_on_one_rank_stops_every_rank_after_the_same_step(files, tmp_path):
    config = tmp_path / "nan.yaml"
    # with a seediness term every parameter has a gradient: DDP without find_unused_parameters
    config.write_text(CONFIG.replace("loss:\n", "loss:\n  nan: {name: nan_on_rank1}\n  seediness: {name: seed_distance}\n"))
    stopped = launch(files, 2, tmp_path / "stop", "--nan-at", 3, config)
    assert stopped.returncode != 0
    assert stopped.stderr.count("step 3: non-finite loss: nan = nan") == 2, stopped.stderr  # both ranks
    assert load_checkpoint(tmp_path / "stop" / "rank0" / "checkpoints" / "last.pt")["step"] == 2
    skipped = launch(files, 2, tmp_path / "skip", "--nan-at", 3, config, "--set", "train.on_nonfinite=skip")
    assert skipped.returncode == 0, skipped.stderr
    assert [r["skipped_steps"] for r in records(tmp_path / "skip" / "rank0") if "loss" in r][:4] == [0, 0, 1, 1]


def test_a_batch_that_does_not_divide_among_the_processes_is_refused(files, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="train.batch_size = 4 does not divide among 3 processes"):
        train(load_config(files / "two.yaml"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sync_bn_turns_batch_norm_into_sync_batch_norm_and_refuses_a_network_without():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    plain = {k: v.clone() for k, v in network.state_dict().items()}
    synced = sync_batch_norm(network, torch.device("cpu"))
    assert isinstance(synced[1], torch.nn.SyncBatchNorm)
    images = torch.randn(2, 3, 8, 8)
    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    reference.load_state_dict(plain)
    torch.testing.assert_close(synced(images), reference(images))  # one process: plain batch norm
    reference.load_state_dict(synced.state_dict())  # its checkpoints load into the network without it
    with pytest.raises(ConfigError, match="train.sync_bn = true, but the network has no BatchNorm layer"):
        sync_batch_norm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4)), torch.device("cpu"))


class Draws(torch.utils.data.Dataset):
    """Item i: (i, a number drawn from torch's generator), as an augmentation draws."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return {"index": index, "draw": torch.rand(())}


def loaded(rank: int, world_size: int, num_workers: int = 0, skip: int = 0) -> list[dict]:
    torch.manual_seed(0)
    return list(epoch_loader(Draws(), 4, num_workers, seed=7, skip=skip, rank=rank, world_size=world_size))


@pytest.mark.parametrize("skip", [0, 1])
def test_each_rank_takes_its_slice_of_the_batches_one_process_takes(skip):
    whole = [batch["index"].tolist() for batch in loaded(0, 1, skip=skip)]
    halves = [[batch["index"].tolist() for batch in loaded(rank, 2, skip=skip)] for rank in (0, 1)]
    assert len(whole) == 2 - skip  # 10 images in batches of 4: the last 2 are dropped
    assert [first + second for first, second in zip(*halves)] == whole


def test_worker_draws_repeat_for_a_worker_count_and_differ_between_ranks():
    rank0, again, rank1 = loaded(0, 2, num_workers=1), loaded(0, 2, num_workers=1), loaded(1, 2, num_workers=1)
    assert all(torch.equal(a["draw"], b["draw"]) for a, b in zip(rank0, again))
    assert not any(torch.equal(a["draw"], b["draw"]) for a, b in zip(rank0, rank1))
