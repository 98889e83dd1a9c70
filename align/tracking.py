"""Experiment tracking (W&B, TensorBoard, none), run naming and secret hygiene.

Secrets never come from config: W&B reads WANDB_API_KEY from the environment (or `wandb login`). Anything that
looks like a credential is redacted wherever a config or a command line is written or sent: the run's config.yaml,
W&B (its config and the command line it records), TensorBoard, Hydra's multirun.yaml, its log lines and its
"Error executing job with overrides" line. One rule decides what looks like a credential: `is_secret_key`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, Quote, QuotedString, Sweep
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from align.config import LoggerConfig, hydra_multirun

# Any key naming a key, secret, token, password, credential, auth scheme, cookie or session: `hf_token`, `creds`,
# `secret_key`, `aws_secret_access_key`, `auth_header`, `private_key`. Substrings, so that new spellings are hidden too.
_SECRET_WORD = re.compile(r"key|secret|token|passw|passphrase|pwd|cred|auth|cookie|session|bearer|private",
                          re.IGNORECASE)
# Words that contain one of those but name no credential; removed from a name before it is searched, so that
# `skip_special_tokens` or `paper_author` is shown while `author_api_key` or `authorization` is still hidden.
_FALSE_FRIENDS = re.compile(r"author(?!i)|keyword|credit|special_tokens?|session_len(?:gth)?", re.IGNORECASE)
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
# The user information of a URL (`https://user:password@host`, `https://<token>@host`): a credential whatever the key.
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)[^/?#@\s'\"]+@", re.IGNORECASE)
REDACTED = "<redacted>"


def is_secret_key(name: str) -> bool:
    """Whether a config key (or the last part of a dotted one, `+trainer.trl.hub_token`) names a credential.

    Errs on the side of hiding: every name containing a secret-like word is one, unless it is a known harmless name
    (`max_new_tokens`, `pad_token`, `eos_token_id`, `tokenizer_path`, ...) or the word is part of a harmless one
    (`author`, `keyword`, `credit`, `special_tokens`, `session_len`). A key named just `key` is hidden: API clients
    take their credential under that name (a reward source's `kwargs: {key: ...}`), and no setting of align, TRL or
    Hydra is called that.
    """
    name = str(name).lstrip("+~").rsplit(".", 1)[-1]
    return bool(_SECRET_WORD.search(_FALSE_FRIENDS.sub("_", name))) and not _HARMLESS.fullmatch(name)


def _without_url_credentials(text: str) -> str:
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


def redact(value: Any, replacement: Any = REDACTED) -> Any:
    """A copy of a nested dict/list with the values of credential-like keys replaced by `replacement` (None stays
    None) and the user information of URLs in strings (`https://user:password@host`) by REDACTED."""
    if isinstance(value, dict):
        return {k: (replacement if is_secret_key(k) and v is not None else redact(v, replacement))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, replacement) for v in value]
    if isinstance(value, str):
        return _without_url_credentials(value)
    return value


# `key=value` / `key: value`, the key optionally quoted ("api_key": ..., 'api_key': ...) as JSON and Python print it.
_ASSIGNMENT = re.compile(r"([\w.\-]+)['\"]?\s*([=:])\s*")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# Where an unquoted value ends, outside brackets: at a quote or a line break; after `=` (an override, in a printed
# command line or a list of them) also before the next override (` key=`), so that `Bearer abc` is hidden whole.
_VALUE_STOP = {"=": re.compile(r"['\"\n]|\s+[+~]*[\w.@/\-]+="), ":": re.compile(r"['\"\n]")}


def _value_end(text: str, start: int, separator: str) -> int:
    """Where the value that starts at `start` ends: a quoted string, else everything up to a `_VALUE_STOP` outside
    brackets or the bracket that closes the enclosing dict or list (the end of the text when there is none). Errs
    on hiding more: after `{api_key: a, b` the rest of the dict is hidden, since unparsed text cannot tell a
    comma inside the value from one between items."""
    quoted = _QUOTED.match(text, start)
    if quoted:
        return quoted.end()
    depth = 0
    for index in range(start, len(text)):
        if depth == 0 and _VALUE_STOP[separator].match(text, index):
            return index
        depth += (text[index] in "[{(") - (text[index] in ")}]")
        if depth < 0:
            return index
    return len(text)


def redact_text(text: str) -> str:
    """`text` (a log line, a printed list of overrides, an error message) with the value after every
    credential-like key replaced, and the user information of URLs: `+trainer.trl.hub_token=abc`,
    `{secret_key: abc}`, `{Authorization: Bearer abc}`, `{api_key: [a, b]}`, `"api_key": "abc"`,
    `'password': 'abc'`, `https://user:password@host`."""
    pieces, done = [], 0
    for match in _ASSIGNMENT.finditer(text):
        key, separator = match.groups()
        # A dotted name before ':' is an import path (`my.rewards:score`), not a dict key.
        if match.start() < done or not is_secret_key(key) or (separator == ":" and "." in key):
            continue
        end = _value_end(text, match.end(), separator)
        if end > match.end():
            pieces += [text[done:match.end()], REDACTED]
            done = end
    return _without_url_credentials("".join(pieces) + text[done:])


@functools.cache
def _overrides_parser():
    return OverridesParser.create()


def redact_override(override: str) -> str:
    """A command-line argument (a Hydra override) with credentials replaced, still an override Hydra parses: the
    whole value of a credential-like key (`+trainer.trl.hub_token='<redacted>'`, sweeps too), credential-like keys
    at any depth of a dict or list value, in each choice of a sweep
    (`reward.sources=[{name: x, kwargs: {secret_key: '<redacted>'}}]`), and the user information of URLs. An
    argument that does not parse is redacted as text (`redact_text`)."""
    try:
        parsed = _overrides_parser().parse_overrides([override])[0]
    except HydraException:
        return redact_text(override)
    hidden = QuotedString(REDACTED, Quote.single)
    key, value = parsed.get_key_element(), parsed._value
    if parsed.value_type is None or (isinstance(value, Sweep) and not isinstance(value, ChoiceSweep)):
        return _without_url_credentials(override)  # a deletion without a value, a range or interval of numbers
    if is_secret_key(parsed.key_or_group):
        return f"{key}={hidden.with_quotes()}"
    choices = value.list if isinstance(value, ChoiceSweep) else [value]
    redacted = redact(choices, hidden)
    if redacted == redact(choices):  # no credential-like key: the two differ only in what replaces one
        return _without_url_credentials(override)  # as typed
    rendered = ", ".join(Override._get_value_element_as_str(choice, space_after_sep=True) for choice in redacted)
    if isinstance(value, ChoiceSweep) and not value.simple_form:
        rendered = f"choice({rendered})"
    return _without_url_credentials(f"{key}={rendered}")


class RedactedArguments:
    """Mixin for TRL's config classes (listed first): what transformers logs or writes of the arguments hides
    credentials at any depth. That is `to_dict` (the W&B config, TensorBoard's `args` text and hparams) and every
    pickle of them (training_args.bin in each checkpoint, and in the model artifact transformers' W&B callback
    uploads with WANDB_LOG_MODEL; a record that resuming does not read); TrainingArguments itself masks only
    top-level `*_token` fields. Copies (`copy.copy`, `copy.deepcopy`: that W&B callback deep-copies the arguments
    for the trainer it builds) keep the real values."""

    def to_dict(self) -> dict:
        return redact(super().to_dict())

    def __getstate__(self) -> dict:
        return redact(dict(self.__dict__))

    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict):
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


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
        import wandb  # here, not at the top: an optional dependency (align[wandb]), for logger=wandb only
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
        import wandb  # optional (see start_tracking)

        if wandb.run is not None:
            wandb.finish()
