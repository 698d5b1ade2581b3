"""What ends a training run before its last step: a stop signal, or a non-finite loss or gradient.

`StopSignals` turns SIGINT and SIGTERM into a flag that the training loop reads after each step,
so that it can save a checkpoint and raise `TrainingInterrupted` instead of dying part-way.
`nonfinite_fault` tells, before the optimiser steps, whether a step's loss or gradients hold a NaN
or an infinity, and names the loss terms or the parameters where they are.
"""
from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from typing import Self  # Python 3.11; annotations are not evaluated at run time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run saved a checkpoint and stopped on a signal; `exit_status` is the shell's 128 + signal."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.signal, self.step, self.checkpoint = signal.Signals(signum), step, checkpoint
        self.exit_status = 128 + int(signum)
        super().__init__(f"stopped by {self.signal.name} after step {step}; saved {checkpoint}")


class NonFiniteError(FloatingPointError):
    """A step's loss or gradients were not finite; the weights were not updated."""


class StopSignals:
    """Inside `with StopSignals() as stop:` a SIGINT or SIGTERM sets `stop.signal` (the loop finishes
    its step, saves and stops) instead of ending the process; a second one acts as it did before
    (Ctrl-C twice stops at once). The previous handlers come back on leaving the block. Outside the
    main thread, where Python cannot handle signals, nothing changes."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in STOP_SIGNALS}
        return self

    def handle(self, signum, frame) -> None:
        self.signal = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers leave SIGINT and SIGTERM to the main process, which stops
    them after saving (Ctrl-C in a terminal reaches every process of the group)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def nonfinite_fault(losses: dict, grad_norm: torch.Tensor, model: torch.nn.Module) -> str | None:
    """None when the total loss and the gradients' norm are finite (one device sync), else what is not:
    the loss entries that are NaN or infinite, or the parameters whose gradients are."""
    if bool(torch.isfinite(losses["loss"].detach()) & torch.isfinite(grad_norm)):
        return None
    if not torch.isfinite(losses["loss"].detach()):
        bad = [f"{name} = {float(value.detach())}" for name, value in losses.items() if not torch.isfinite(value).all()]
        return f"non-finite loss: {', '.join(bad)}"
    finite_loss = f"the loss {float(losses['loss'].detach()):.6g} is finite"
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not bad:  # finite gradients whose total norm overflows
        return f"non-finite gradient ({finite_loss}): the gradients' total norm is {float(grad_norm)}"
    more = f" (and of {len(bad) - 1} more parameters)" if len(bad) > 1 else ""
    return f"non-finite gradient ({finite_loss}): gradient of {bad[0]}{more}"


def first_nonfinite_entry(model: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or an infinity, or None (one device sync)."""
    entries = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in entries]).tolist() if entries else []
    return next((name for (name, _), ok in zip(entries, finite) if not ok), None)
