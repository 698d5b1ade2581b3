"""Writing output files whole or not at all.

Every file the package writes goes through `atomic_path`: the content goes to a temporary name in
the same folder, which is then renamed over the target (`os.replace`, atomic within one file
system). A crash or a kill leaves the old file or the new one, never half of one. A process killed
mid-write can leave its temporary file behind (`.NAME.PID.tmp.EXT`, hidden); `written_name` maps it
back to NAME, so a command that replaces its own outputs recognises the leftover as one of them.
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.\d+\.tmp(\.[^.]*)?")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s content to; renamed to `path` when the block ends without error.

    The temporary name keeps the extension, so writers that pick the format from it (PIL,
    matplotlib) write the right one. On an error it is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the block failed


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, indent: int | None = None) -> Path:
    return write_text(path, json.dumps(data, indent=indent))


def write_csv(path: str | Path, rows: list[dict]) -> Path:
    """`rows` as CSV with a header; the columns are every key of the rows, in order of first appearance
    (a row without one leaves its cell empty)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def written_name(name: str) -> str:
    """The name a leftover temporary file (of `atomic_path`, or an older `NAME.tmp`) was to get; other
    names unchanged."""
    match = TEMPORARY_NAME.fullmatch(name)
    return match["name"] if match else name.removesuffix(".tmp")


def describe_entries(entries: list[str], limit: int = 5) -> str:
    """'a, b/, c and 4 more': entry names for a one-line message."""
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
