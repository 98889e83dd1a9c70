"""What the decoding CLIs (`python -m align.decode`, `python -m align.best_of_n`) share: their user error, the
argument parser that reports errors on one line, the prompt loader and the atomic JSONL writer.

Imports nothing heavy at module level: a CLI's --help and its argument checks must be fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class DecodeError(ValueError):
    """The arguments cannot work as given; the message says which one and why (exit code 2)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one line and exit 2, like every other error here
        print(f"align: error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict],
            argv: list[str] | None) -> dict:
    """`run` on the parsed `argv` (default: sys.argv[1:]); a user error (bad arguments, data or model path) prints
    `align: error: ...` to stderr and exits with code 2."""
    args = parser.parse_args(argv)
    try:
        return run(args)
    except Exception as err:
        # lazy: these modules load datasets / transformers; the error classes are needed only once a run fails
        from align.data import DataError
        from align.models import ModelLoadError

        if not isinstance(err, (DecodeError, DataError, ModelLoadError)):
            raise
        print(f"align: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def load_prompts(source: str, column: str, limit: int | None) -> tuple[list[list[dict]], list | None]:
    """(prompts as chat messages, answers or None) from 'synthetic' (the default data config's held-out split:
    disjoint from the rows a default-data policy trained on) or a local .jsonl / .json / .parquet / .csv file, read by
    `load_splits` as in training (`column` holds the prompts); the first `limit` when given."""
    # lazy: align.data imports datasets, too slow for --help
    from align.config import ColumnsConfig, DataConfig
    from align.data import DataError, load_splits

    if source == "synthetic":
        _, dataset = load_splits(DataConfig())
    else:
        columns = ColumnsConfig(prompt=column if column != "prompt" else None)
        try:
            dataset, _ = load_splits(DataConfig(source=str(Path(source).expanduser()), columns=columns))
        except DataError as err:  # its messages name the training config's settings; here they are flags
            raise DecodeError(str(err).replace("data.columns.prompt", "--prompt-column")
                              .replace("data.source", "--prompts")) from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    answers = dataset["answer"] if "answer" in dataset.column_names else None
    return list(dataset["prompt"]), answers


def check_out(out_arg: str, overwrite: bool) -> Path:
    """--out as a path whose directory exists and is writable; an existing file only with `overwrite`."""
    out = Path(out_arg).expanduser()
    if out.is_dir():
        raise DecodeError(f"--out '{out_arg}' is a directory; give a file path such as {out / 'out.jsonl'}.")
    if out.exists() and not overwrite:
        raise DecodeError(f"--out '{out_arg}' already exists; pass --overwrite to replace it or choose another path.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DecodeError(f"cannot create the directory of --out '{out_arg}': {err}") from err
    if not os.access(out.parent, os.W_OK):
        raise DecodeError(f"the directory of --out '{out_arg}' is not writable.")
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write rows as jsonl atomically: a temporary file beside `path`, then os.replace (never a half-written file)."""
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
                                         encoding="utf-8")
    try:
        with handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary file, not for the result
        os.replace(handle.name, path)
    except BaseException:  # KeyboardInterrupt included: take the temporary file away
        Path(handle.name).unlink(missing_ok=True)
        raise
