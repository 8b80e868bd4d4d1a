"""What every synthetic demo set shares: a README saying it is synthetic, and a parameter marker written last.

A set counts as complete only when its marker holds the parameters it was made with and every expected file exists,
so bundles can call ``ensure_synthetic_*`` on every run and regenerate only what is missing, incomplete or stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtransfer.atomic import write_text_atomic

README_NAME = "SYNTHETIC_README.txt"


def finish_demo_set(out: Path, marker_name: str, params: dict, readme: str) -> None:
    """Write the README, then the parameter marker last: a set without its marker counts as incomplete."""
    (out / README_NAME).write_text(readme.format(params=", ".join(f"{k}={v}" for k, v in params.items())))
    write_text_atomic(out / marker_name, json.dumps(params, sort_keys=True))


def demo_set_is_current(out: Path, marker_name: str, params: dict, expected: list[Path]) -> bool:
    """Whether `out` holds a complete set made with `params` (one JSON read and one stat per file)."""
    try:
        recorded = json.loads((out / marker_name).read_text())
    except (OSError, ValueError):
        return False
    return recorded == params and all(p.is_file() for p in expected)
