"""Benchmark 6 — the GPU check: BERT-base-sized KD in bf16, in under 10 minutes on one CUDA GPU.

    bash experiments/benchmarks/gpu_check.sh          # or: python experiments/benchmarks/gpu_check.py

Random-init BERT-base and BERT-large teachers and a 6-layer BERT-base-wide student (random init is
enough for speed) on the built-in synthetic task with long sentences. Rows, each timed over the
same number of optimizer steps after warm-up:

* student-only fine-tuning (CE, no teacher) — the floor;
* KD with cached teachers (logits + mapped [CLS] states, soft adoption over both teachers,
  hidden alignment): target <= 1.1x the floor's step time;
* KD with online teachers (teacher forwards every step, dynamic padding, bf16);
* paper mode: online teachers, padding to 128, fp32.

Reports examples/s, tokens/s (real, unpadded tokens), ms/step, the ratio to the floor, peak GPU
memory, and the one-off cache build time. ``--quick`` runs tiny presets on the CPU (test suite).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from kd_backend.config import DistillerConfig
from kd_backend.data import load_task
from kd_backend.distiller import Distiller, Teacher
from kd_backend.models import build_model
from kd_backend.plan import EpochPlan
from kd_backend.synthetic import SyntheticConfig
from kd_backend.tokenization import train_wordpiece_tokenizer


@dataclass(frozen=True)
class Args:
    teachers: tuple[str, ...] = ("bert-base", "bert-large")
    """Teacher presets (random init)."""
    student: str = "bert-6x768"
    """Student preset (random init)."""
    train_size: int = 20000
    """Synthetic training sentences."""
    max_words: int = 90
    """Longest synthetic sentence, in words (long enough to reach ~128 tokens)."""
    batch_size: int = 32
    """Training batch size (the paper's)."""
    steps: int = 60
    """Timed optimizer steps per row (after ``warmup`` untimed ones)."""
    warmup: int = 10
    """Untimed steps before each timed row (CUDA kernels, allocator)."""
    out: str = "runs/bench/gpu_check"
    """Output folder (gpu_check.json)."""
    quick: bool = False
    """Tiny presets on the CPU, a few steps (for the test suite)."""


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def run(args: Args) -> list[dict]:
    if args.quick:
        args = Args(teachers=("tiny-1x64", "tiny-2x128"), student="tiny-1x64", train_size=400, max_words=30,
                    steps=3, warmup=1, out=args.out)
        set_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    t0 = time.perf_counter()
    task = load_task("synthetic", synthetic=SyntheticConfig(num_train=args.train_size, num_dev=500, max_words=args.max_words))
    tok = train_wordpiece_tokenizer(list(task.train.text_a), vocab_size=8000)
    teachers = [Teacher(name, build_model(name, 2, len(tok), seed=i).to(device), tok) for i, name in enumerate(args.teachers)]
    print(f"data + tokenizer + models: {time.perf_counter() - t0:.1f}s on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}", flush=True)
    lengths = None
    rows = []
    kd = EpochPlan(teacher_mode="soft", hidden_weight=1.0, max_steps=args.steps)
    cases = [
        ("student-only fine-tuning (floor)", (), "cache", False, True, EpochPlan(kd_weight=0.0, max_steps=args.steps)),
        ("KD, cached teachers, bf16", teachers, "cache", False, True, kd),
        ("KD, online teachers, bf16", teachers, "online", False, True, kd),
        ("paper mode: online, pad 128, fp32", teachers, "online", True, False, kd),
    ]
    for name, tchs, source, pad, bf16, plan in cases:
        cfg = DistillerConfig(epochs=1, batch_size=args.batch_size, lr=2e-5, max_seq_length=128, teacher_source=source,
                              pad_to_max_length=pad, bf16=bf16, cache_dir=str(Path(args.out) / "cache"),
                              device=device.type)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        d = Distiller(task, lambda s: build_model(args.student, 2, len(tok), seed=s), tok, list(tchs), cfg)
        setup = time.perf_counter() - t0
        d.train_epoch(plan.replace(max_steps=args.warmup))
        stats = d.train_epoch(plan)
        enc = d._student_enc["train"]
        lengths = enc.lengths if lengths is None else lengths
        real_tokens = stats.examples_trained * float(lengths.mean())
        rows.append({
            "mode": name, "ms/step": 1000 * stats.wall_time / stats.steps, "examples/s": stats.examples_trained / stats.wall_time,
            "tokens/s": real_tokens / stats.wall_time, "peak GiB": _peak_gib(device), "setup s": setup,
        })
        print(rows[-1], flush=True)
        del d
    floor = rows[0]["ms/step"]
    for r in rows:
        r["vs floor"] = r["ms/step"] / floor
    rows[1]["target"] = "<= 1.1x: " + ("met" if rows[1]["vs floor"] <= 1.1 else "not met")
    print_table(rows, ["mode", "ms/step", "vs floor", "examples/s", "tokens/s", "peak GiB", "setup s", "target"],
                title=f"GPU check on {device}: teachers {list(args.teachers)}, student {args.student}, batch "
                f"{args.batch_size}, mean {float(lengths.mean()):.0f} tokens/instance")
    write_json(Path(args.out) / "gpu_check.json", {"args": args, "rows": rows})
    return rows


if __name__ == "__main__":
    cli(run, Args, __doc__)
