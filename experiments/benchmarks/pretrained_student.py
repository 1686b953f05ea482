"""A pretrained student at full speed: DynaKD's fine-tuning epoch against a plain Hugging Face loop.

    python experiments/benchmarks/pretrained_student.py --data-dir ../shared/data/glue --train-limit 2000

The student is ``minilm-l2`` (the bottom 2 layers of pretrained MiniLM-L6: 77% of its 15.6M
parameters are the 30,522 x 384 word embedding). Rows, all on the same sentences, one after the
other in one process (ratios, not absolute times, are what to read on a busy machine):

* a plain loop: ``AutoModelForSequenceClassification``, the tokenizer padding each batch,
  ``torch.optim.AdamW``, forward / backward / optimizer step timed separately (the profile);
* the same loop with the word embedding frozen;
* DynaKD's epoch (``Distiller.train_epoch``, CE only: pre-tokenized, length-grouped batches) with
  the embedding trained, and with ``freeze_embeddings``.

Each row also reports dev accuracy after its epoch. Writes ``OUT/pretrained_student.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from kd_backend.config import BackendConfig
from kd_backend.distiller import Distiller
from kd_backend.models import load_pretrained
from kd_backend.pipeline import build_student, load_task_data
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    task: str = "glue/sst2"
    """Task (a GLUE task with --data-dir, or synthetic)."""
    data_dir: str | None = "../shared/data/glue"
    """GLUE folder in TSV layout."""
    train_limit: int = 2000
    """Training sentences per epoch."""
    student: str = "minilm-l2"
    """Pretrained preset of the student."""
    batch_size: int = 32
    """Sentences per step."""
    max_seq_length: int = 64
    """Tokens per sentence after truncation."""
    lr: float = 1e-4
    """AdamW learning rate."""
    threads: int = 1
    """torch intra-op threads."""
    out: str = "runs/bench/pretrained_student"
    """Output folder."""
    quick: bool = False
    """Smoke-test size (synthetic data, a few steps; for the test suite)."""


def plain_loop(args: Args, task, freeze: bool, seed: int = 0) -> dict:
    """One epoch of a textbook Hugging Face fine-tuning loop, with forward/backward/step timed apart."""
    model, tokenizer = load_pretrained(args.student, task.spec.num_labels, seed=seed)
    if freeze:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    texts, labels = list(task.train.text_a), torch.from_numpy(np.array(task.train.labels))
    order = np.random.default_rng(seed).permutation(len(texts))
    times = {"tokenize": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
    model.train()
    start = time.perf_counter()
    for b in range(0, len(order), args.batch_size):
        idx = order[b: b + args.batch_size]
        t0 = time.perf_counter()
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=args.max_seq_length,
                          return_tensors="pt")
        t1 = time.perf_counter()
        loss = model(**batch, labels=labels[idx]).loss
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[key] += dt
    wall = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        dev = list(task.dev.text_a)
        for b in range(0, len(dev), 128):
            batch = tokenizer(dev[b: b + 128], padding=True, truncation=True, max_length=args.max_seq_length,
                              return_tensors="pt")
            correct += int((model(**batch).logits.argmax(-1).numpy() == task.dev.labels[b: b + 128]).sum())
    row = {"row": f"plain HF loop{', embedding frozen' if freeze else ''}", "examples/s": len(order) / wall,
           "seconds": wall, "dev": correct / len(task.dev)}
    row.update({f"{k} share": v / wall for k, v in times.items()})
    return row


def dynakd_epoch(args: Args, task, freeze: bool, seed: int = 0) -> dict:
    cfg = BackendConfig(
        task=args.task, data_dir=args.data_dir, teachers=(), student=args.student, lr=args.lr, epochs=1,
        batch_size=args.batch_size, max_seq_length=args.max_seq_length, warmup_ratio=0.0, device="cpu",
        freeze_embeddings=freeze, progress=False,
    )
    factory, tokenizer = build_student(cfg, task)
    distiller = Distiller(task, factory, tokenizer, teachers=(), config=cfg.distiller_config())
    distiller.reset(seed)
    stats = distiller.train_epoch(EpochPlan(kd_weight=0.0))
    return {"row": f"DynaKD epoch{', freeze_embeddings' if freeze else ''}",
            "examples/s": stats.examples_trained / stats.wall_time, "seconds": stats.wall_time,
            "dev": distiller.evaluate("dev").score}


def main(args: Args) -> list[dict]:
    set_threads(args.threads)
    if args.quick:
        args = replace(args, task="synthetic", data_dir=None, train_limit=64, student="minilm-l1")
    cfg = BackendConfig(task=args.task, data_dir=args.data_dir, train_limit=args.train_limit,
                        synthetic_train=200, synthetic_dev=50, dev_limit=200 if args.quick else None)
    task = load_task_data(cfg)
    rows = [plain_loop(args, task, False), plain_loop(args, task, True), dynakd_epoch(args, task, False),
            dynakd_epoch(args, task, True)]
    base = rows[0]["examples/s"]
    for row in rows:
        row["vs plain"] = row["examples/s"] / base
    columns = ["row", "examples/s", "vs plain", "seconds", "dev", "forward share", "backward share", "step share"]
    print_table(rows, columns, title=f"{task.spec.name}: student {args.student}, {len(task.train)} sentences, "
                f"batch {args.batch_size}, {args.threads} thread(s)")
    write_json(Path(args.out) / "pretrained_student.json", {"args": args, "rows": rows})
    return rows


if __name__ == "__main__":
    cli(main, Args, __doc__)
