"""Checkpoints of plain data (state dicts, step, RNG states, config dict, version), written atomically."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

import embedseg
from embedseg.outputs import atomic_path


def save_checkpoint(path: str | Path, **state) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(dict(state, version=embedseg.__version__), tmp)


def load_checkpoint(path: str | Path) -> dict:
    """The plain data of a checkpoint; a missing, empty, truncated or foreign file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes), as a save cut short by a full disk leaves it; "
                         "use another checkpoint of the run or train again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # torch's errors for a broken zip or pickle
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path}: truncated or not a torch checkpoint ({reason}); use "
                         "another checkpoint of the run or train again") from e


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's global generators, and of every CUDA device's
    generator once CUDA is in use (checking for it does not start CUDA)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Undo everything drawn since `rng_state()` gave `state` (CUDA generators where CUDA is in use)."""
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_initialized():
        for device, cuda_state in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def changed_keys(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    """{dotted key: (old value, new value)} of every leaf that differs between two nested dicts (a key
    missing on one side has the value None there)."""
    changed = {}
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.update(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            changed[f"{prefix}{key}"] = (a, b)
    return changed
