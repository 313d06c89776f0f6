"""One result file per experiment cell: a cell whose JSON exists is read back, not run again, so a
table can be completed across sessions and any cell rerun by deleting its file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from reliability.checkpoint import write_atomic
from speed.hardware import describe


def cell(results: Path, name: str, compute: Callable[[], dict]) -> dict:
    """results/NAME.json if it exists; else compute(), stamped with this CPU, written atomically."""
    path = results / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute() | {"cpu": describe()}
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(lambda p: p.write_text(json.dumps(result, indent=2)), path)
    return result
