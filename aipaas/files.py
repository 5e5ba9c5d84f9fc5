"""Small file mechanisms every stage uses: atomic replacement and JSON-lines histories.

A reader never sees half a file: :func:`atomic_write` writes a temporary file
beside the target and renames it over (``os.replace`` is atomic on POSIX), so
a crash leaves either the old content or the new. A history is one JSON
object per line, only ever appended (:func:`append_jsonl`): a crash can cut
off at most the last line, which :func:`read_jsonl` skips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Replace ``path`` with ``data`` in one step; creates the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    with open(tmp, "wb") as fh:
        fh.write(raw)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: Path, value: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of ``value`` as JSON (``default=str`` for dates and paths)."""
    return atomic_write(path, json.dumps(value, indent=indent, default=str, sort_keys=False))


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def append_jsonl(path: Path, record: dict[str, Any], *, fsync: bool = False) -> Path:
    """Append one record as one line (a single ``write`` under ``O_APPEND``).

    With ``fsync`` the line is on disk when this returns (a decision log);
    without, it survives the process dying but not a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return path


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record in ``path``, oldest first; a torn last line is skipped."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash mid-append


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All records of :func:`iter_jsonl` as a list."""
    return list(iter_jsonl(path))
