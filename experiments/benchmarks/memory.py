"""Benchmark 5 — memory: peak RSS of the default learn run, and the teacher cache's bytes per 1,000 examples.

    python experiments/benchmarks/memory.py --task glue/sst2 --data-dir ../shared/data/glue --train-limit 10000

Peak RSS: ``experiments/learn_policy.py`` runs as a child process (with ``--learn-args`` passed
through) and the kernel's high-water mark of its resident memory is read back (target <= 3 GiB).
Cache: the bytes of each teacher's cache files on disk per 1,000 examples, against what the data
needs at 16 bits per value — logits (C values) and the [CLS] state of each mapped layer (L x H) —
with no padding stored (target: at most 5% above).
"""

from __future__ import annotations

import resource
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro
from _bench import print_table, write_json  # noqa: I001

from agents.cli import cli
from kd_backend.config import BackendConfig
from kd_backend.pipeline import build_distiller

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Args:
    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig(
        task="glue/sst2", data_dir="../shared/data/glue", train_limit=10000, teachers=("tiny-2x128", "tiny-4x256"),
        student="tiny-1x64", teacher_epochs=2, progress=False,
    )
    learn_args: str = ""
    """Arguments passed to experiments/learn_policy.py for the peak-RSS run ("" = the default run)."""
    skip_learn: bool = False
    """Only measure the cache."""
    out: str = "runs/bench/memory"
    """Output folder (memory.json)."""
    quick: bool = False
    """Smoke-test size (for the test suite)."""


def peak_rss_of(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd`` to completion; return (peak RSS in GiB of the largest child, exit code)."""
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return peak_kib / 2**20, proc.returncode


def cache_rows(cfg: BackendConfig) -> list[dict]:
    distiller = build_distiller(cfg)
    rows = []
    for k, name in enumerate(distiller.teacher_names):
        for split in ("train", "ctrl", "dev"):
            out = distiller._teacher_outputs(k, split)
            n, c = out.logits.shape
            layers, hidden = (out.hidden.shape[1], out.hidden.shape[2]) if out.hidden is not None else (0, 0)
            need = n * (c + layers * hidden) * 2  # 16-bit values, no padding
            path = distiller.cache_paths[(k, split)]
            size = path.stat().st_size
            rows.append({
                "teacher": name, "split": split, "examples": n, "file bytes/1k": size / n * 1000,
                "bytes/1k (16-bit need)": need / n * 1000, "excess": size / need - 1,
                "met (<= 5%)": "yes" if size <= 1.05 * need else "no",
            })
    return rows


def run(args: Args) -> dict:
    cfg = args.backend
    learn_args = shlex.split(args.learn_args)
    if args.quick:
        cfg = replace(cfg, task="synthetic", data_dir=None, train_limit=None, synthetic_train=200, synthetic_dev=50,
                      teachers=("tiny-1x64",), teacher_epochs=1, max_seq_length=48)
    result: dict = {"config": cfg}
    if not args.skip_learn:
        cmd = [sys.executable, str(ROOT / "experiments" / "learn_policy.py"), *learn_args]
        gib, code = peak_rss_of(cmd)
        row = {"run": " ".join(["learn_policy.py", *learn_args]), "peak RSS GiB": gib, "target GiB": 3.0,
               "met": "yes" if gib <= 3.0 and code == 0 else "no", "exit code": code}
        print_table([row], list(row), title="peak resident memory")
        result["learn"] = row
    rows = cache_rows(cfg)
    print_table(rows, list(rows[0]), title=f"teacher cache size ({cfg.task})")
    result["cache"] = rows
    write_json(Path(args.out) / "memory.json", result)
    return result


if __name__ == "__main__":
    cli(run, Args, __doc__)
