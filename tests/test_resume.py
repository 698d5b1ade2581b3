"""A run survives being stopped: SIGKILL at a random step, SIGINT and SIGTERM, non-finite losses and
gradients, and a resume with another config.

The process tests run `python -m embedseg train` on a tiny synthetic config in deterministic mode
(7 images of 32 x 32 pixels in batches of 2: epochs of 3 batches, one image left over each time, so
the checkpoints fall in the middle of epochs) and compare with an uninterrupted run bit for bit. The
in-process tests train the same config for a few steps.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from embedseg.cli import main
from embedseg.config import ConfigError, load_config
from embedseg.engine import trainer
from embedseg.engine.checkpoint import load_checkpoint, save_checkpoint
from embedseg.engine.faults import NonFiniteError, TrainingInterrupted
from embedseg.engine.run import build_network
from embedseg.engine.trainer import epoch_loader, train

REPO = Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 24, 4
RESUMABLE_CONFIG = f"""
name: resumable
seed: 3
data:
  dataset: {{name: synthetic, size: 32, num_images: 7, min_objects: 1, max_objects: 3, min_radius: 3, max_radius: 6}}
  split_params: {{val: {{num_images: 2}}}}
  crop_size: 24
  scale_range: [0.8, 1.25]
  rotate_degrees: 10
  brightness: 0.1
model: {{name: deeplab, backbone: resnet18, width: 0.125, output_stride: 16, embedding_dim: 8}}
loss:
  embedding: {{name: discriminative, weight: 1.0}}
  semantic: {{name: cross_entropy, weight: 1.0}}
  seediness: {{name: seed_distance, weight: 1.0}}
train: {{steps: {STEPS}, batch_size: 2, log_every: 1, warmup_steps: 2, checkpoint_every: {CHECKPOINT_EVERY},
         deterministic: true}}
grouping:
  components: {{min_size: 5}}
"""
TIMING = ("images_per_s", "elapsed_s")


def load(config_file, *overrides):
    return load_config(config_file, list(overrides))


def embedseg(*args, **popen):
    """`python -m embedseg *args` of this checkout, as a process (one thread, as every run here)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "embedseg", *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def start(config, run_dir, *extra, **popen):
    return embedseg("train", config, "--out", run_dir, "--no-eval", *extra, **popen)


def finish(process) -> None:
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 0, stderr


def records(run_dir) -> list[dict]:
    """log.jsonl without the timing fields (complete lines only: the run may be writing)."""
    path = run_dir / "log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines if line.endswith("}")]


def stop_at(process, run_dir, step: int, send) -> str:
    """Wait until the run has logged `step`, then `send()`; the run's stderr."""
    while process.poll() is None:
        logged = records(run_dir)
        if logged and logged[-1]["step"] >= step:
            send()
            break
        time.sleep(0.01)
    return process.communicate(timeout=120)[1]


def weights(run_dir) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_run(run_dir, reference):
    ours, theirs = weights(run_dir), weights(reference)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert records(run_dir) == records(reference)  # every step's losses, lr, gradient norm


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "resumable.yaml"
    path.write_text(RESUMABLE_CONFIG)
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(start(config_file, run_dir))
    assert [r["step"] for r in records(run_dir)] == list(range(1, STEPS + 1))
    return run_dir


def test_a_run_killed_at_a_random_step_resumes_to_the_uninterrupted_weights(config_file, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    kill_at = random.SystemRandom().randint(CHECKPOINT_EVERY + 1, STEPS - 8)
    process = start(config_file, run_dir)
    stop_at(process, run_dir, kill_at, process.kill)
    assert process.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}"
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert CHECKPOINT_EVERY <= saved["step"] < STEPS and saved["step"] % CHECKPOINT_EVERY == 0
    assert saved["position"] == {"epoch": saved["step"] // 3, "batch": saved["step"] % 3, "num_images": 7}

    finish(start(config_file, run_dir, "--resume"))
    assert_same_run(run_dir, uninterrupted)  # killed at kill_at (or a step or two later)


def test_sigint_saves_the_step_reached_and_prints_how_to_resume(config_file, uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = start(config_file, run_dir, start_new_session=True)
    stderr = stop_at(process, run_dir, 6, lambda: os.killpg(process.pid, signal.SIGINT))  # as Ctrl-C does
    assert process.returncode == 130 and "Traceback" not in stderr
    reached = records(run_dir)[-1]["step"]
    assert 6 <= reached < STEPS and load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == reached
    line = stderr.strip().splitlines()[-1]
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert line.startswith(f"embedseg train: stopped by SIGINT after step {reached}; saved {checkpoint}; continue with: ")

    command = shlex.split(line.split("continue with: ")[1])
    assert command == ["embedseg", "train", str(config_file), "--out", str(run_dir), "--resume"]
    finish(embedseg(*command[1:], "--no-eval"))  # the printed command
    assert_same_run(run_dir, uninterrupted)


def test_sigint_stops_a_run_whose_batches_come_from_worker_processes(config_file, tmp_path):
    run_dir = tmp_path / "run"
    process = start(config_file, run_dir, "--set", "train.num_workers=1", start_new_session=True)
    stderr = stop_at(process, run_dir, 2, lambda: os.killpg(process.pid, signal.SIGINT))  # workers get it too
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    reached = records(run_dir)[-1]["step"]
    assert f"stopped by SIGINT after step {reached}" in stderr.strip().splitlines()[-1]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == reached


# ----------------------------------------------------------------------------- in-process runs


def change_losses(monkeypatch, change):
    """Every run's criterion passes its result through `change(losses, outputs, step)`."""
    build = trainer.build_criterion

    def build_changed(spec):
        criterion = build(spec)
        forward = criterion.forward
        criterion.forward = lambda outputs, batch, step=None: change(forward(outputs, batch, step=step), outputs, step)
        return criterion

    monkeypatch.setattr(trainer, "build_criterion", build_changed)


def nan_at(steps: set[int]):
    """A change that makes the embedding term (and so the loss) NaN at the given 0-based steps."""
    def change(losses, outputs, step):
        if step in steps:
            losses = dict(losses, embedding=losses["embedding"] * float("nan"), loss=losses["loss"] * float("nan"))
        return losses
    return change


def test_sigterm_finishes_the_step_saves_and_restores_the_handlers(tmp_path, config_file, monkeypatch, capsys):
    def terminate_during_step_3(losses, outputs, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    change_losses(monkeypatch, terminate_during_step_3)
    before = signal.getsignal(signal.SIGTERM)
    run_dir = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run_dir), "--set", "train.steps=5"]) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 3
    assert [r["step"] for r in records(run_dir)] == [1, 2, 3]
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"embedseg train: stopped by SIGTERM after step 3; saved {run_dir / 'checkpoints' / 'last.pt'}; "
        f"continue with: embedseg train {config_file} --set train.steps=5 --out {run_dir} --resume")


def test_with_worker_processes_a_run_stopped_at_the_end_of_an_epoch_resumes_exactly(tmp_path, config_file,
                                                                                    monkeypatch):
    """Epochs of 3 batches: stopped after step 6, the resumed run starts epoch 2 with fresh workers, as
    the uninterrupted run does."""
    def terminate_during_step_6(losses, outputs, step):
        if step == 5 and os.environ.get("STOP_AT_STEP_6"):
            os.kill(os.getpid(), signal.SIGTERM)
        return losses

    change_losses(monkeypatch, terminate_during_step_6)
    config = load(config_file, "train.steps=8", "train.num_workers=1")
    uninterrupted = train(config, tmp_path / "uninterrupted")
    monkeypatch.setenv("STOP_AT_STEP_6", "1")
    with pytest.raises(TrainingInterrupted, match="after step 6"):
        train(config, tmp_path / "run")
    monkeypatch.delenv("STOP_AT_STEP_6")
    assert_same_run(train(config, tmp_path / "run", resume=True), uninterrupted)


def test_a_nan_loss_stops_the_run_before_the_step_and_keeps_the_last_checkpoint(tmp_path, config_file,
                                                                                 monkeypatch, capsys):
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    before_fault = {}

    def nan_at_step_4(losses, outputs, step):
        if step == 3:
            before_fault["last.pt"] = last.read_bytes()  # written after step 2 (checkpoint_every 2)
        return nan_at({3})(losses, outputs, step)

    change_losses(monkeypatch, nan_at_step_4)
    args = ["train", str(config_file), "--out", str(tmp_path / "run"), "--set", "train.steps=6",
            "--set", "train.checkpoint_every=2"]
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("embedseg train: error: step 4: non-finite loss: embedding = nan, loss = nan; the weights "
                           f"were not updated and {last} is kept as it was; try a lower train.lr")
    assert last.read_bytes() == before_fault["last.pt"] and load_checkpoint(last)["step"] == 2


def test_a_finite_loss_with_nan_gradients_is_caught_and_names_the_parameter(tmp_path, config_file, monkeypatch):
    def nan_gradients(losses, outputs, step):  # d sqrt(x) / dx is infinite at 0, and infinity * 0 is NaN
        return dict(losses, loss=losses["loss"] + (outputs["embedding"].sum() * 0).sqrt())

    change_losses(monkeypatch, nan_gradients)
    config = load(config_file)
    first_parameter = next(iter(build_network(config, 2).named_parameters()))[0]
    with pytest.raises(NonFiniteError, match=rf"^step 1: non-finite gradient \(the loss [0-9.]+ is finite\): "
                                             rf"gradient of {first_parameter} \(and of \d+ more parameters\)"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path, config_file, monkeypatch):
    """A weight made infinite behind the optimiser's back (the last bias: no gradient depends on its
    value, so loss and gradients stay finite) is found before last.pt is written."""
    build, networks = trainer.build_network, []
    monkeypatch.setattr(trainer, "build_network", lambda *args: networks.append(build(*args)) or networks[-1])

    def break_the_last_bias_at_step_2(losses, outputs, step):
        if step == 1:
            list(networks[-1].parameters())[-1].data.fill_(float("inf"))
        return losses

    change_losses(monkeypatch, break_the_last_bias_at_step_2)
    config = load(config_file, "train.steps=3", "train.checkpoint_every=1")
    last_bias = [name for name, _ in build(config, 2).named_parameters()][-1]
    with pytest.raises(NonFiniteError, match=f"^after step 2 {last_bias} of the network is not finite; last.pt is not "
                                             f"written"):
        train(config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 1


def test_skip_leaves_the_weights_and_counts_the_skipped_steps(tmp_path, config_file, monkeypatch):
    change_losses(monkeypatch, nan_at({1, 3}))
    run_dir = train(load(config_file, "train.steps=5", "train.on_nonfinite=skip"), tmp_path / "run")
    logged = records(run_dir)
    assert [r["skipped_steps"] for r in logged] == [0, 1, 1, 2, 2]
    assert [r["loss"] is None for r in logged] == [False, True, False, True, False]  # NaN is logged as null
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["skipped_steps"] == 2


def test_skipping_every_step_leaves_the_initial_parameters(tmp_path, config_file, monkeypatch):
    """lr 0 leaves every parameter at its initial value (AdamW's decay is lr * weight_decay), as does
    skipping every step; the BatchNorm statistics move in both, as the forward passes still run."""
    initial = load(config_file, "train.steps=2", "train.lr=0.0")
    names = [name for name, _ in build_network(initial, 2).named_parameters()]
    expected = load_checkpoint(train(initial, tmp_path / "lr0") / "checkpoints" / "last.pt")["model"]
    change_losses(monkeypatch, nan_at({0, 1}))
    skip = load(config_file, "train.steps=2", "train.on_nonfinite=skip")
    skipped = load_checkpoint(train(skip, tmp_path / "skip") / "checkpoints" / "last.pt")
    assert skipped["skipped_steps"] == 2
    assert all(torch.equal(skipped["model"][name], expected[name]) for name in names)


def test_resume_refuses_a_config_that_trains_differently_and_takes_one_that_logs_differently(tmp_path, config_file):
    run_dir = train(load(config_file, "train.steps=2"), tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    saved = last.read_bytes()
    for change, named in (("train.lr=0.002", "train.lr 0.001 -> 0.002"),
                          ("train.steps=3", "train.steps 2 -> 3"),
                          ("loss.embedding.delta_v=0.4", "loss.embedding.delta_v None -> 0.4")):
        with pytest.raises(ConfigError, match=f"^--resume: {last} was trained with another config \\({named}\\)"):
            train(load(config_file, "train.steps=2", change), run_dir, resume=True)
    assert last.read_bytes() == saved
    train(load(config_file, "train.steps=2", "train.log_every=2", "grouping.components.min_size=9"), run_dir,
          resume=True)
    assert load_checkpoint(last)["config"]["train"]["log_every"] == 2


def test_resume_takes_a_checkpoint_from_before_a_key_was_added(tmp_path, config_file):
    config = load(config_file, "train.steps=2", "train.deterministic=false")
    run_dir = train(config, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    del checkpoint["config"]["train"]["deterministic"]  # as written before train.deterministic existed
    save_checkpoint(last, **checkpoint)
    train(config, run_dir, resume=True)  # the missing key has its default, as in the config
    assert load_checkpoint(last)["config"]["train"]["deterministic"] is False


def test_resume_refuses_a_train_split_of_another_size(tmp_path, config_file):
    assert main(["data", "synth", "--out", str(tmp_path / "data"), "--num-images", "5", "--size", "64"]) == 0
    config = load(config_file, "train.steps=1", f"data.dataset={{name: folder, root: {tmp_path / 'data'}}}",
                   "data.split_params={}")
    run_dir = train(config, tmp_path / "run")
    for path in (tmp_path / "data" / "train").glob("*/train_00004.png"):  # the image, its masks and classes
        path.unlink()
    with pytest.raises(ValueError, match="the train split has 4 images, the checkpoint was trained on 5"):
        train(config, run_dir, resume=True)


def test_evaluating_during_training_leaves_the_training_unchanged(tmp_path, config_file):
    a = load_checkpoint(train(load(config_file, "train.steps=2"), tmp_path / "a") / "checkpoints" / "last.pt")
    evaluated = load(config_file, "train.steps=2", "train.eval_every=1")
    b = load_checkpoint(train(evaluated, tmp_path / "b") / "checkpoints" / "last.pt")
    assert b["best_ap"] >= 0 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_deterministic_turns_on_deterministic_algorithms_for_the_run_only(tmp_path, config_file, monkeypatch):
    seen = []
    change_losses(monkeypatch, lambda losses, outputs, step: seen.append(torch.are_deterministic_algorithms_enabled())
                  or losses)
    train(load(config_file, "train.steps=1", "train.deterministic=true"), tmp_path / "on")
    train(load(config_file, "train.steps=1", "train.deterministic=false"), tmp_path / "off")
    assert seen == [True, False] and not torch.are_deterministic_algorithms_enabled()


def test_an_epoch_resumed_at_a_batch_continues_its_shuffle():
    images = list(range(7))  # 3 batches of 2, one image left out
    whole = [batch.tolist() for batch in epoch_loader(images, 2, 0, seed=5)]
    assert len(whole) == 3 and len({image for batch in whole for image in batch}) == 6
    assert [batch.tolist() for batch in epoch_loader(images, 2, 0, seed=5, skip=2)] == whole[2:]
    assert [batch.tolist() for batch in epoch_loader(images, 2, 0, seed=6)] != whole


def test_sigterm_outside_training_unwinds_the_command_so_its_temporary_folders_go(tmp_path, monkeypatch):
    """A command killed with SIGTERM (tune, evaluate) exits 143 through its `with` blocks: nothing is left in /tmp."""
    from embedseg import cli

    def command_in_a_temporary_folder(args):
        with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
            (Path(folder) / "outputs.pt").write_bytes(b"cached")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises at once
        return 0

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(
        func=command_in_a_temporary_folder, verbose=False, debug=False, command="tune"))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["tune", "run"])
    assert stopped.value.code == 143
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
