"""What recording every checkpoint file's size and SHA-256 in the completion marker adds to a save.

    .venv/bin/python benchmarks/checkpoint_hashing.py                     # tiny-model run + a 512 MiB file
    .venv/bin/python benchmarks/checkpoint_hashing.py --saves 3 --big-mib 64 --out /tmp/hashing.json   # smoke test

1. Tiny model: a GRPO run of the embedded model saving a checkpoint every step (`--saves` of them). Per save, the
   seconds of the whole `_save_checkpoint` (weights, optimizer, RNG, trainer state, fsync, marker) and of the hashing
   inside it (`CompleteCheckpoints._digests`), timed around the real methods.
2. A large file: `--big-mib` MiB of float32 optimizer-like state written with `torch.save` and fsynced, then
   hashed with `align.checkpoints.file_digest` right after, as a save does (the file is still in the page cache),
   `--repeats` times. Its save time is the write, the fsync and the hashing.

Both are written under `--workdir` (a temporary directory in the system default place unless given; where /tmp is
a RAM disk, give a directory on the disk checkpoints go to).

Writes JSON (`--out`, default benchmarks/results/checkpoint_hashing.json) and prints a markdown table. Hashing is
single-threaded per file; several ranks hash a share each, so a sharded save divides the large-file figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "checkpoint_hashing.json"


def timed(record: list, fn):
    """`fn` wrapped to append its wall seconds to `record`."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - start)
    return wrapper


def tiny_model_saves(saves: int, workdir: Path) -> dict:
    from align.checkpoints import CompleteCheckpoints
    from align.train import run
    from tests.conftest import compose

    save_s, hash_s = [], []
    original_save, original_digests = CompleteCheckpoints._save_checkpoint, CompleteCheckpoints._digests
    CompleteCheckpoints._save_checkpoint = timed(save_s, original_save)
    CompleteCheckpoints._digests = timed(hash_s, original_digests)
    try:
        run(compose(["trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                     "algorithm.max_completion_length=16", "data.synthetic.num_train=64", "eval.enabled=false",
                     f"trainer.output_dir={workdir / 'tiny'}", f"trainer.max_steps={saves}", "trainer.save_steps=1",
                     f"trainer.save_total_limit={saves}"]))
    finally:
        CompleteCheckpoints._save_checkpoint, CompleteCheckpoints._digests = original_save, original_digests
    checkpoint = workdir / "tiny" / f"checkpoint-{saves}"
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    return summarise(save_s, hash_s, size)


def big_file(mib: int, repeats: int, workdir: Path) -> dict:
    import torch

    from align.checkpoints import _fsync, file_digest

    save_s, hash_s = [], []
    state = {"exp_avg": torch.randn(mib * (1 << 20) // 4)}
    path = workdir / "optimizer.pt"
    for _ in range(repeats):
        start = time.perf_counter()
        torch.save(state, path)
        _fsync(path)
        written = time.perf_counter()
        file_digest(path)
        hash_s.append(time.perf_counter() - written)
        save_s.append(time.perf_counter() - start)
        path.unlink()
    return summarise(save_s, hash_s, mib << 20)


def _filesystem(path: Path) -> str:
    """The type of the filesystem `path` is on (from /proc/mounts; "unknown" elsewhere)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    path = path.resolve()
    best = max((m for m in mounts if path.is_relative_to(m[1])), key=lambda m: len(m[1]), default=None)
    return best[2] if best else "unknown"


def summarise(save_s: list[float], hash_s: list[float], size: int) -> dict:
    return {
        "bytes": size,
        "saves": len(save_s),
        "save_s_median": statistics.median(save_s),
        "hash_s_median": statistics.median(hash_s),
        "hash_share_of_save": statistics.median(h / s for h, s in zip(hash_s, save_s)),
        "hash_mb_per_s": size / 1e6 / statistics.median(hash_s),
        "save_s": save_s,
        "hash_s": hash_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=6, help="checkpoints the tiny-model run saves (one per step)")
    parser.add_argument("--big-mib", type=int, default=512, help="size of the large file, MiB")
    parser.add_argument("--repeats", type=int, default=3, help="writes + hashes of the large file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoints are written")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        results = {"tiny_model": tiny_model_saves(args.saves, Path(workdir)),
                   "big_file": big_file(args.big_mib, args.repeats, Path(workdir))}
    results.update(filesystem=_filesystem(args.workdir or Path(tempfile.gettempdir())), machine=platform.platform(),
                   cpus=os.cpu_count(), loadavg=os.getloadavg(),
                   timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| case | size | save (median) | hashing (median) | share of the save | hashing MB/s |")
    print("|---|---|---|---|---|---|")
    for case in ("tiny_model", "big_file"):
        r = results[case]
        print(f"| {case} | {r['bytes'] / 1e6:.1f} MB | {r['save_s_median']:.3f} s | {r['hash_s_median']:.3f} s | "
              f"{r['hash_share_of_save']:.1%} | {r['hash_mb_per_s']:.0f} |")


if __name__ == "__main__":
    main()
