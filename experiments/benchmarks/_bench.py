"""Helpers shared by the benchmark scripts: table printing, JSON output, timing."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_backend.io import atomic_write_json

logging.basicConfig(level=logging.WARNING)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> str:
    """Print ``rows`` as a markdown table (and return it)."""
    lines = [f"### {title}"] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str | Path, data: Any) -> Path:
    """Write results (dataclasses included) atomically."""
    def convert(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {k: convert(v) for k, v in dataclasses.asdict(obj).items()}
        if isinstance(obj, dict):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        return obj

    return atomic_write_json(path, convert(data))


def set_threads(threads: int | None) -> None:
    """Fix torch's intra-op threads (None keeps torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
