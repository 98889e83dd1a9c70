"""Experiment tracking (W&B, TensorBoard, none), run naming and secret hygiene.

Secrets never come from config: W&B reads WANDB_API_KEY from the environment (or `wandb login`). Anything that
looks like a credential is redacted wherever a config or a command line is written or sent: the run's config.yaml,
W&B (its config and the command line it records), TensorBoard, Hydra's multirun.yaml, its log lines and its
"Error executing job with overrides" line. One rule decides what looks like a credential: `is_secret_key`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from align.config import LoggerConfig, hydra_multirun

# Any key naming a key, secret, token, password, credential, auth scheme, cookie or session: `hf_token`,
# `secret_key`, `aws_secret_access_key`, `auth_header`, `private_key`. Substrings, so that new spellings are hidden too.
_SECRET_WORD = re.compile(r"key|secret|token|passw|passphrase|pwd|credential|auth|cookie|session|bearer|private",
                          re.IGNORECASE)
# Known harmless names among those (whole names): token counts and ids, a tokenizer's special tokens (text such as
# "<|endoftext|>"), tokenizer settings, and fields of TRL's and Hydra's configs. tests/test_tracking.py walks every
# recipe's config and TRL's config classes so that a new harmless key is added here, not silently hidden.
_HARMLESS = re.compile(
    r"(max|min|num)_(new_|prompt_|completion_|input_|output_|total_|generated_)?tokens"
    r"|tokens|tokens_per_s|include_num_input_tokens_seen|average_tokens_across_devices"
    r"|[a-z_]*token_ids?"
    r"|(pad|eos|bos|unk|sep|cls|mask)_token"
    r"|tokenizer(_name|_path|_name_or_path|_revision)?"
    r"|hub_private_repo|exclude_keys",
    re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_key(name: str) -> bool:
    """Whether a config key (or the last part of a dotted one, `+trainer.trl.hub_token`) names a credential.

    Errs on the side of hiding: every name containing a secret-like word is one, unless it is a known harmless name
    (`max_new_tokens`, `pad_token`, `eos_token_id`, `tokenizer_path`, ...).
    """
    name = str(name).lstrip("+~").rsplit(".", 1)[-1]
    return bool(_SECRET_WORD.search(name)) and not _HARMLESS.fullmatch(name)


def redact(value: Any) -> Any:
    """A copy of a nested dict/list with the values of credential-like keys replaced (None stays None)."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


# `key=value` / `key: value`, the key optionally quoted ("api_key": ..., 'api_key': ...) as JSON and Python print it.
_ASSIGNMENT = re.compile(r"([\w.\-]+)['\"]?\s*([=:])\s*")
# The value after it: a quoted string, else up to the end of the word (after `=`) or of the dict item (after `:`).
_VALUE = {"=": re.compile(r"'[^']*'|\"[^\"]*\"|[^\s'\"]*"), ":": re.compile(r"'[^']*'|\"[^\"]*\"|[^\s,'\"\]}]*")}


def redact_text(text: str) -> str:
    """`text` (a log line, a printed list of overrides) with the value after every credential-like key replaced:
    `+trainer.trl.hub_token=abc`, `{secret_key: abc}`, `"api_key": "abc"`, `'password': 'abc'`."""
    pieces, done = [], 0
    for match in _ASSIGNMENT.finditer(text):
        key, separator = match.groups()
        # A dotted name before ':' is an import path (`my.rewards:score`), not a dict key.
        if match.start() < done or not is_secret_key(key) or (separator == ":" and "." in key):
            continue
        value = _VALUE[separator].match(text, match.end())
        if value.group():
            pieces += [text[done:match.end()], REDACTED]
            done = value.end()
    return "".join(pieces) + text[done:]


def redact_override(override: str) -> str:
    """A command-line argument (a Hydra override) with credentials replaced: the whole value of a credential-like
    key (`+trainer.trl.hub_token=a,b` sweeps too), and credential-like keys inside a dict value
    (`reward.sources=[{name: x, kwargs: {secret_key: abc}}]`)."""
    key, equals, value = override.partition("=")
    if equals and value and is_secret_key(key):
        return f"{key}={REDACTED}"
    return redact_text(override)


class RedactedArguments:
    """Mixin for TRL's config classes (listed first): what transformers logs or writes of the arguments hides
    credentials at any depth. That is `to_dict` (the W&B config, TensorBoard's `args` text and hparams) and the
    pickle each checkpoint keeps (training_args.bin, a record that resuming does not read); TrainingArguments itself
    masks only top-level `*_token` fields."""

    def to_dict(self) -> dict:
        return redact(super().to_dict())

    def __getstate__(self) -> dict:
        return redact(dict(self.__dict__))


@contextlib.contextmanager
def _redacted_argv():
    """sys.argv with credentials redacted, restored on exit: W&B records the command line when a run starts."""
    argv = sys.argv
    sys.argv = [argv[0], *map(redact_override, argv[1:])]
    try:
        yield
    finally:
        sys.argv = argv


class _RedactRecord(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), ()
        return True


# Hydra's launchers log each point's overrides ("#0 : a=1 +trainer.trl.hub_token=...").
_LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher",
                     "hydra_plugins.hydra_submitit_launcher.submitit_launcher")


class RedactCredentials(Callback):
    """Hydra callback (hydra.callbacks in configs/config.yaml): credentials in the overrides stay out of the
    launchers' log lines and out of Hydra's "Error executing job with overrides: [...]" line."""

    def __init__(self) -> None:
        for name in _LAUNCHER_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactRecord) for f in logger.filters):
                logger.addFilter(_RedactRecord())

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        job_return.overrides = [redact_override(o) for o in job_return.overrides or []]


def sweep_names(group: str | None, run_name: str, sweep: dict | None) -> tuple[str | None, str]:
    """(W&B group, W&B run name). Outside a sweep (`sweep` None): `logger.group` and the run's name.

    Under a Hydra multirun sweep, `sweep` = {"dir": hydra.sweep.dir, "overrides": the point's overrides as typed
    (hydra.overrides.task), "exclude": hydra.job.config.override_dirname.exclude_keys}: the group is the sweep's
    name unless logger.group is set: the last component of the sweep directory, shared by all points and unchanged
    when Slurm requeues one (the default directory, a timestamp, gives "sweep-<timestamp>"); the run is named by
    the point's overrides as hydra.job.override_dirname is ("lr=1e-05,seed=1", sorted), with credential-like values
    redacted. A point without overrides keeps the run's name.
    """
    if sweep is None:
        return group, run_name
    if group is None:
        group = Path(sweep["dir"]).name
        group = f"sweep-{group}" if group[:1].isdigit() else group
    items = []
    for override in sweep.get("overrides") or []:
        if override.partition("=")[0].lstrip("+~") in (sweep.get("exclude") or []):
            continue
        items.append(redact_override(override))
    return group, ",".join(sorted(items)) or run_name


def _hydra_sweep() -> dict | None:
    """This process's sweep (see `sweep_names`), or None when not a point of a Hydra multirun."""
    hydra_cfg = hydra_multirun()
    if hydra_cfg is None:
        return None
    return {"dir": hydra_cfg.sweep.dir, "overrides": list(hydra_cfg.overrides.task),
            "exclude": list(hydra_cfg.job.config.override_dirname.exclude_keys)}


def resumable_run_id(run_dir: Path) -> str:
    """A W&B run id fixed by the run directory: every attempt of a resumed run (resume=auto) logs to one W&B run."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def start_tracking(cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, is_main_process: bool,
                   resumable: bool = False) -> list[str]:
    """Start the tracker on the main process and return TRL's `report_to` list (the same on every rank).

    `resumable` (resume=auto): W&B continues the run of an earlier attempt in the same directory, if there is one.
    """
    if cfg.backend == "none":
        return []
    if cfg.backend == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")  # read by transformers' callback
        return ["tensorboard"]
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logger=wandb needs the wandb package: pip install 'align[wandb]'.") from err
    if is_main_process and wandb.run is None:
        # Initialised here (not by transformers' callback) so the run carries align's full config, tags and group;
        # the callback then reuses this run, and every metric is logged against train/global_step.
        group, name = sweep_names(cfg.group, run_name, _hydra_sweep())
        with _redacted_argv():
            wandb.init(project=cfg.project, entity=cfg.entity, group=group, tags=list(cfg.tags) or None,
                       name=name, dir=str(run_dir), config=redact(config), mode=cfg.mode,
                       **({"id": resumable_run_id(run_dir), "resume": "allow"} if resumable else {}))
    return ["wandb"]


def finish_tracking(cfg: LoggerConfig, is_main_process: bool) -> None:
    if cfg.backend == "wandb" and is_main_process:
        import wandb

        if wandb.run is not None:
            wandb.finish()
