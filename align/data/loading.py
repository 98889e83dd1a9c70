"""Load a `DataConfig` into validated training and held-out `datasets.Dataset`s with canonical columns.

Canonical columns (other columns pass through untouched):
  prompt   - required; chat messages `[{"role": "user", "content": "..."}]`. A plain string is converted to messages:
             the optional `data.system_prompt` as a system message, then the string as the user message.
  answer   - the verifier target (numbers read from json/csv/parquet are cast to strings, as the synthetic task
             writes them, so a verifier never compares 85 with "85").
  solution - a step-by-step reference solution (SFT target, hints).

Every problem with the data is raised as `DataError` before any model is loaded, with a message that names the
source, split, column and row, and the config key that fixes it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import datasets

from align.config import DataConfig
from align.data.synthetic import TASKS

# File extension -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_SUFFIXES = (".jsonl", ".json", ".csv")


class DataError(ValueError):
    """The data cannot be used as configured; the message names the column / file / row and the fix."""


def rows_to_dataset(rows: list[dict]) -> datasets.Dataset:
    """Build an in-memory Dataset from a list of row dicts (all rows should share the same keys).

    An empty list gives a Dataset with no rows and no columns.
    """
    return datasets.Dataset.from_list(rows)


def load_splits(cfg: DataConfig, required: tuple[str, ...] | dict[str, str] = ("prompt",)
                ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Load `(train, held_out)` from `cfg.source`, map and validate columns, and convert prompts to messages.

    Sources: "synthetic" (the embedded task `cfg.synthetic.task`), a local .jsonl/.json/.parquet/.csv file, a
    directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, a directory of data files (splits
    inferred from file names, e.g. train.jsonl / test.jsonl), or a Hugging Face Hub dataset name.

    Held-out split: `cfg.eval_split` when set (it then takes precedence over `eval_size`); otherwise the last
    `cfg.eval_size` rows of train when > 0 (deterministic, so runs are comparable); otherwise None. The synthetic
    source ignores both and always returns its own disjoint held-out split (None when `num_eval` is 0).
    `cfg.max_train_rows` then keeps the first rows of train.

    `cfg.columns` renames source columns to canonical names before validation. A mapped source column is moved,
    not copied; an existing column that already has the canonical name is dropped, because the explicit mapping
    says where that column comes from. One source column may feed several canonical names (it is copied).

    Every column in `required` (and always `prompt`) must exist and be non-empty in every row of both splits.
    Raises DataError otherwise, naming the setting that fixes it: `data.columns.<column>`, or for a column given as
    a mapping `{column: setting}` the setting that names it (e.g. {"demo": "algorithm.completion_column"}).
    """
    named_by = required if isinstance(required, dict) else {}
    required = tuple(dict.fromkeys(("prompt", *required)))  # prompt is always needed; keep order, drop repeats
    required = {column: named_by.get(column) for column in required}
    if cfg.source == "synthetic":
        label = f"synthetic:{cfg.synthetic.task}"
        train, held_out = _load_synthetic(cfg)
    else:
        label = cfg.source
        train, held_out = _load_source(cfg)
    train = _map_columns(train, cfg.columns, f"{label} (split {cfg.split})")
    held_name = cfg.eval_split
    if held_out is not None:
        held_out = _map_columns(held_out, cfg.columns, f"{label} (split {held_name or 'held-out'})")
    elif cfg.eval_size > 0 and cfg.source != "synthetic":
        # Carve before truncating, so max_train_rows never changes which rows are held out.
        train, held_out = _carve(train, cfg.eval_size, label)
        held_name = f"last {cfg.eval_size} rows of {cfg.split}"

    if cfg.max_train_rows is not None:
        if cfg.max_train_rows < 1:
            raise DataError(f"data.max_train_rows must be >= 1 (or null for all rows), got {cfg.max_train_rows}.")
        train = train.select(range(min(cfg.max_train_rows, len(train))))

    train = _prepare(train, required, cfg.system_prompt, f"{label} (split {cfg.split})", cfg.answer_regex)
    if held_out is not None:
        held_out = _prepare(held_out, required, cfg.system_prompt, f"{label} (split {held_name or 'held-out'})",
                            cfg.answer_regex)
    return train, held_out


# --------------------------------------------------------------------------------------------------------------------
# Sources


def _load_synthetic(cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    s = cfg.synthetic
    try:
        train, held_out = TASKS[s.task](s.num_train, s.num_eval, digits=s.digits, operators=tuple(s.operators),
                                        seed=s.seed, sloppy_fraction=s.sloppy_fraction,
                                        min_carries=s.min_carries)
    except ValueError as e:  # too many rows for the problem space, bad operator, bad digits
        raise DataError(f"data.synthetic ({s.task}): {e} Adjust data.synthetic.num_train / num_eval / digits / "
                        f"operators / min_carries.") from e
    return rows_to_dataset(train), (rows_to_dataset(held_out) if held_out else None)


def _looks_local(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or Path(source).suffix.lower() in BUILDERS


def _load_source(cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    path = Path(cfg.source).expanduser()
    if path.is_file():
        return _load_file(path, cfg), None
    if path.is_dir():
        return _load_dir(path, cfg)
    if _looks_local(cfg.source):
        raise DataError(f"data.source '{cfg.source}' looks like a local path but does not exist (resolved to "
                        f"'{path.resolve()}'). Fix the path, or use a Hugging Face Hub dataset name.")
    return _load_hub(cfg)


def _load_file(path: Path, cfg: DataConfig) -> datasets.Dataset:
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"data.source '{path}' has an unsupported extension '{path.suffix}'; use one of "
                        f"{', '.join(BUILDERS)} or a directory written by save_to_disk.")
    if cfg.eval_split:
        raise DataError(f"data.eval_split is '{cfg.eval_split}' but data.source '{path}' is a single file with one "
                        f"split. Set data.eval_size to carve held-out rows off it, or point data.source at a "
                        f"directory with several splits.")
    if path.stat().st_size == 0:  # the json builder would fail with a bare StopIteration
        raise DataError(f"data.source '{path}' is an empty file.")
    _check_utf8(path)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as e:  # malformed rows, wrong encoding, ...: say which file
        raise DataError(f"could not read data.source '{path}' as {builder}: {type(e).__name__}: {e}") from e


def _check_utf8(path: Path) -> None:
    """Text data must be UTF-8: otherwise `datasets` loads it and fails later, on first access to the bad row, with a
    bare UnicodeDecodeError that names no file. Raises DataError naming the file, line and byte."""
    if path.suffix.lower() not in TEXT_SUFFIXES:
        return
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"data.source '{path}' is not UTF-8 text: line {number}, byte {err.start + 1} "
                                f"({line[err.start:err.end]!r}). Re-encode the file as UTF-8, e.g. "
                                f"iconv -f latin1 -t utf-8 in > out.") from None


def _load_dir(path: Path, cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()  # written by save_to_disk
    if not saved:
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() in TEXT_SUFFIXES and file.is_file():
                _check_utf8(file)
    try:  # otherwise a directory of data files: `datasets` infers the builder and splits from the file names
        loaded = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    except Exception as e:
        raise DataError(f"could not load directory data.source '{path}': {type(e).__name__}: {e}. Use a "
                        f"directory written by save_to_disk, or of {'/'.join(BUILDERS)} files.") from e
    if isinstance(loaded, datasets.Dataset):
        if cfg.eval_split:
            raise DataError(f"data.eval_split is '{cfg.eval_split}' but data.source '{path}' holds a single "
                            f"Dataset without splits. Set data.eval_size instead, or save a DatasetDict.")
        return loaded, None
    return _pick(loaded, cfg.split, "data.split", path), (
        _pick(loaded, cfg.eval_split, "data.eval_split", path) if cfg.eval_split else None)


def _pick(splits: datasets.DatasetDict, name: str, key: str, path: Path) -> datasets.Dataset:
    if name not in splits:
        raise DataError(f"{key} '{name}' is not in data.source '{path}'; available splits: {list(splits)}.")
    return splits[name]


def _load_hub(cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    def load(split: str) -> datasets.Dataset:
        try:
            return datasets.load_dataset(cfg.source, cfg.subset, split=split)
        except Exception as e:  # offline, unknown name, unknown subset or split: all end the run the same way
            raise DataError(
                f"could not load data.source '{cfg.source}' (subset {cfg.subset!r}, split '{split}') from the Hugging "
                f"Face Hub: the hub could not be reached, or the dataset, subset or split was not found "
                f"({type(e).__name__}: {e}). Check the name, or set data.source to a local path "
                f"(a {'/'.join(BUILDERS)} file or a save_to_disk directory)."
            ) from e

    return load(cfg.split), (load(cfg.eval_split) if cfg.eval_split else None)


# --------------------------------------------------------------------------------------------------------------------
# Columns, splits and validation


def _map_columns(ds: datasets.Dataset, columns, where: str) -> datasets.Dataset:
    """Rename source columns to canonical names (see `load_splits` for the conflict rules)."""
    if dataclasses.is_dataclass(columns):
        columns = dataclasses.asdict(columns)
    columns = {canon: src for canon, src in dict(columns or {}).items() if src}
    fed = [src for src in columns.values()]
    # An identity entry matters only when its source also feeds another name (e.g. answer and solution from 'answer').
    columns = {canon: src for canon, src in columns.items() if canon != src or fed.count(src) > 1}
    if not columns:
        return ds
    available = ds.column_names
    for canon, src in columns.items():
        if src not in available:
            raise DataError(f"data.columns.{canon} is '{src}', but column '{src}' is not in {where}; available "
                            f"columns: {available}.")
    # rename_columns does not check for clashes with untouched columns, so drop the ones being replaced first.
    sources = set(columns.values())
    ds = ds.remove_columns([c for c in columns if c in available and c not in sources])
    by_source: dict[str, list[str]] = {}
    for canon, src in columns.items():
        by_source.setdefault(src, []).append(canon)
    for canons in by_source.values():  # the identity name, if any, keeps the original column
        canons.sort(key=lambda canon: canon not in by_source)
    ds = ds.rename_columns({src: canons[0] for src, canons in by_source.items() if src != canons[0]})
    copies = {canon: canons[0] for canons in by_source.values() for canon in canons[1:]}
    if copies:
        ds = ds.map(lambda b: {canon: b[first] for canon, first in copies.items()}, batched=True)
    return ds


def _carve(train: datasets.Dataset, size: int, label: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    n = len(train)
    if size >= n:
        raise DataError(f"data.eval_size {size} leaves no training rows: {label} has only {n} rows. Lower "
                        f"data.eval_size, or set data.eval_split to a separate split.")
    return train.select(range(n - size)), train.select(range(n - size, n))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str)
                                                                      else value))


def _is_messages(value: Any) -> bool:
    # Arrow stores messages as structs, so a key missing from some rows reads back as None: check values too.
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and m.get("content") is not None for m in value)


def _extract_answers(ds: datasets.Dataset, pattern: str, where: str) -> datasets.Dataset:
    """Replace each `answer` by the first group (else the whole match) of `pattern` in it, e.g. GSM8K's '#### 72'."""
    regex = re.compile(pattern, re.MULTILINE)
    answers = []
    for i, text in enumerate(ds["answer"]):
        match = regex.search(str(text))
        if match is None:
            raise DataError(f"data.answer_regex {pattern!r} does not match column 'answer' in row {i} of {where}: "
                            f"{str(text)[:200]!r}. Fix the pattern or clean that row.")
        answers.append((match.group(1) if regex.groups else match.group(0)).strip())
    return ds.remove_columns("answer").add_column("answer", answers)


def _prepare(ds: datasets.Dataset, required: dict[str, str | None], system_prompt: str | None,
             where: str, answer_regex: str | None = None) -> datasets.Dataset:
    """Validate `required` columns (column -> the setting that names it, None for a canonical column), extract and
    cast `answer` to strings, and turn prompts into chat messages."""
    if len(ds) == 0:
        raise DataError(f"{where} has no rows.")
    for column, setting in required.items():
        if column not in ds.column_names:
            fix = f"Set {setting} to one of them." if setting else f"Map it with data.columns.{column}=<your column>."
            raise DataError(f"column '{column}' is missing from {where}; available columns: {ds.column_names}. "
                            f"{fix}")
        empty = [i for i, value in enumerate(ds[column]) if _is_empty(value)]
        if empty:
            raise DataError(f"column '{column}' is empty (None, blank or []) in {len(empty)} of {len(ds)} rows of "
                            f"{where}, first at row {empty[0]}. Clean those rows or map another column.")

    for i, prompt in enumerate(ds["prompt"]):
        if not (isinstance(prompt, str) or _is_messages(prompt)):
            raise DataError(f"column 'prompt' in row {i} of {where} is neither a string nor a list of "
                            f"{{'role', 'content'}} messages: {str(prompt)[:200]}.")

    if answer_regex and "answer" in ds.column_names:
        ds = _extract_answers(ds, answer_regex, where)
    if "answer" in ds.column_names and isinstance(ds.features["answer"], datasets.Value) \
            and ds.features["answer"].dtype not in ("string", "large_string"):
        ds = ds.cast_column("answer", datasets.Value("string"))

    if isinstance(ds.features["prompt"], datasets.Value) or system_prompt:  # message lists need no work otherwise
        ds = ds.map(lambda row: {"prompt": to_messages(row["prompt"], system_prompt)})
    return ds


def to_messages(prompt: str | list[dict], system_prompt: str | None = None) -> list[dict]:
    """A string becomes `[system?, user]`; a message list gets the system message prepended if it has none."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages
