"""What a person sees on the console: align's own `--help`, the run's one-line launch description, one compact line
per logging step, progress bars for long phases, and known dependency noise silenced where it starts.

Imports nothing heavy (no torch, transformers or TRL, which take seconds): `--help` and a config error answer before
any of them loads. The trainer callback that prints the step lines is `align.progress.ConsoleProgress`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from tqdm.auto import tqdm

# --------------------------------------------------------------------------------------------------------------------
# Dependency noise


class _DropMessages(logging.Filter):
    """Drops log records whose message contains any of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


# Logger name -> messages it emits that tell a person nothing actionable. Filters attach to the logger object, which
# keeps them when the library later sets its own level and handlers (DeepSpeed does so at import).
_NOISY_RECORDS = {
    # On every CPU run (and on any GPU machine whose accelerator DeepSpeed does not probe): a fallback it then uses.
    "DeepSpeed": ("Setting accelerator to CPU",),
    # A table of the keys a checkpoint lacked or had extra; for a reward model on a causal LM that is by design (a
    # new head, no lm_head). Size mismatches and conversion errors still raise.
    "transformers.modeling_utils": ("LOAD REPORT",),
}
# (category, message regex) of warnings raised inside dependencies, not by anything a user of align can change.
_NOISY_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),  # TRL calls transformers' deprecated name
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),  # DeepSpeed's collectives, every ZeRO-3 step
)


def quiet_dependencies(logger_backend: str) -> None:
    """Silence the known noise of transformers / TRL / datasets / DeepSpeed / W&B at its source.

    Call it once the config is valid and before a run imports its heavy modules: some notices are printed by an
    import. It imports transformers and datasets itself, for their progress-bar switches. Idempotent; align's own
    bars stay. Other libraries' INFO records (matplotlib's "generated new fontManager", the gcc command lines of
    DeepSpeed's compiler probes) are kept off the console by the logging config, configs/hydra/job_logging/align.yaml.
    """
    for name, fragments in _NOISY_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*fragments))
    for category, message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if logger_backend != "wandb":
        _import_without_wandb_notice()
    # Here, not at the top: seconds to import, and align.train imports this module before the config is validated.
    import datasets
    import transformers

    # Bars for steps of a second or less (weight loading and saving, dataset maps such as TRL's tokenization); hub
    # downloads keep theirs (huggingface_hub's own switch).
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _import_without_wandb_notice() -> None:
    """transformers prints "[INFO] Running in WANDB offline mode" when its integrations module is imported with
    WANDB_MODE=offline, whether or not W&B is used; import it once with that variable hidden (and put back)."""
    if "transformers.integrations.integration_utils" in sys.modules:
        return
    mode = os.environ.pop("WANDB_MODE", None)
    try:
        import transformers.integrations.integration_utils  # noqa: F401
    finally:
        if mode is not None:
            os.environ["WANDB_MODE"] = mode


# --------------------------------------------------------------------------------------------------------------------
# The launch, in words


_ENGINES = {"NO": "", "MULTI_CPU": "DDP", "MULTI_GPU": "DDP", "FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}


def describe_launch(processes: int, distributed_type: str, device: str, zero_stage: str | int | None = None) -> str:
    """E.g. "1 process on CPU", "2 processes, DeepSpeed ZeRO-3 on CPU", "8 processes, DDP on GPU".

    `distributed_type` is accelerate's DistributedType value (NO, MULTI_GPU, DEEPSPEED, ...), `device` a torch device
    type (cpu, cuda, ...), `zero_stage` DeepSpeed's ZeRO stage when known.
    """
    engine = _ENGINES.get(distributed_type, distributed_type.replace("_", " ").lower())
    if distributed_type == "DEEPSPEED" and zero_stage not in (None, ""):
        engine += f" ZeRO-{zero_stage}"
    where = {"cpu": "CPU", "cuda": "GPU"}.get(device, device.upper())
    return f"{processes} process{'es' if processes != 1 else ''}{f', {engine}' if engine else ''} on {where}"


# --------------------------------------------------------------------------------------------------------------------
# Step lines


def _significant(value: float) -> str:
    return f"{value:.3g}"


def _thousands(value: float) -> str:
    """1234.5 -> "1.2k", 2.5e6 -> "2.5M"."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


@dataclass(frozen=True)
class Column:
    """One number of the step line: the first of `keys` (metric names as logged to trainer_state.json) present in a
    log, shown as "<label> <value>", or as "<value> <unit>" when `unit` is set (e.g. "1.2k tok/s")."""

    keys: tuple[str, ...]
    label: str
    unit: str = ""

    def render(self, logs: Mapping[str, float]) -> str | None:
        value = next((logs[k] for k in self.keys if isinstance(logs.get(k), (int, float))), None)
        if value is None:
            return None
        return f"{_thousands(value)} {self.unit}" if self.unit else f"{self.label} {_significant(value)}"


TOKENS_PER_S = Column(("perf/tokens_per_s",), "tok/s", unit="tok/s")
LOSS = Column(("loss",), "loss")
# The few numbers that tell whether a run is learning, per kind of method; a column shows when one of its keys is
# logged. Held-out logs are matched with their "eval_" prefix removed.
GRPO_COLUMNS = (Column(("reward",), "reward"), Column(("kl",), "kl"),
                Column(("groups/zero_variance_frac",), "zero-var"), Column(("heldout_accuracy",), "acc"),
                TOKENS_PER_S)
SFT_COLUMNS = (LOSS, Column(("mean_token_accuracy",), "token acc"), TOKENS_PER_S)
REWARD_MODEL_COLUMNS = (LOSS, Column(("accuracy",), "acc"), Column(("auc",), "auc"), Column(("margin",), "margin"),
                        TOKENS_PER_S)
DPO_COLUMNS = (LOSS, Column(("rewards/margins", "margin"), "margin"),
               Column(("policy/preference_accuracy", "preference_accuracy"), "pref acc"), TOKENS_PER_S)


def metric_parts(logs: Mapping[str, float], columns: Iterable[Column]) -> list[str]:
    """The rendered columns present in `logs`, in column order (non-numeric values skipped)."""
    return [part for part in (c.render(logs) for c in columns) if part is not None]


def step_line(logs: Mapping[str, float], step: int, max_steps: int, columns: Iterable[Column],
              label: str = "") -> str | None:
    """The compact console line for one `Trainer.log` call, e.g.
    "step 20/120 | reward 0.61 | kl 0.004 | zero-var 0.25 | acc 0.71 | 1.2k tok/s"; None when none of `columns` is
    in `logs`. Held-out logs (keys "eval_*") read as "held-out step 20/120 | loss 0.52 | acc 0.81"; the end-of-training
    summary (train_runtime) as "step 120/120 done in 95.3 s". `label` (e.g. "warm start") leads the line."""
    lead = f"{label} " if label else ""
    if "train_runtime" in logs:
        return f"{lead}step {step}/{max_steps} done in {logs['train_runtime']:.1f} s"
    held_out = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
    parts = metric_parts(held_out or logs, columns)
    if not parts:
        return None
    return f"{lead}{'held-out ' if held_out else ''}step {step}/{max_steps} | " + " | ".join(parts)


def interactive() -> bool:
    """Whether progress bars can redraw in place: stderr (where tqdm draws) is a terminal. Under CI or a Slurm log
    file they would append a line per refresh, so only the step lines are printed there."""
    return sys.stderr.isatty()


def phase_progress(iterable: Iterable, desc: str | None, total: int | None = None) -> Iterable:
    """`iterable`, with a progress bar named `desc` while a long phase (held-out evaluation, reference scoring) runs;
    the bar goes when the phase ends. None for `desc` (pass it on all but the main process), or no terminal: no bar."""
    if desc is None or not interactive():
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------------------------
# --help

_USAGE = """\
usage: python -m align.train [recipe=NAME | recipe=PATH.yaml] [GROUP=OPTION ...] [KEY=VALUE ...]
       accelerate launch --config_file launch/accelerate/<zero2|zero3|ddp>.yaml -m align.train recipe=NAME ...
       python -m align.train -m KEY=A,B ...        (a sweep: one run per value; hydra/launcher=slurm for Slurm)

A run composes configs/ (the groups below), then the recipe, then your overrides; every key is typed and checked
before anything is loaded. Examples:
  python -m align.train recipe=grpo-arithmetic-tiny trainer.max_steps=100
  python -m align.train recipe=~/experiments/my_recipe.yaml logger=wandb"""


def recipe_summary(path: Path, width: int = 116) -> str:
    """The first sentence of a recipe's leading comment (after `# @package`), shortened to `width` characters."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    first = re.split(r"(?<=[.!?])\s", " ".join(lines), maxsplit=1)[0]
    return textwrap.shorten(first, width=width, placeholder=" ...")


def config_groups(configs_dir: Path) -> dict[str, list[str]]:
    """Config group ("model", "hydra/launcher", ...) -> its options, from the YAML files under `configs_dir` (the
    recipe group is listed as the recipes)."""
    groups = {}
    for path in sorted(configs_dir.rglob("*.yaml")):
        group = path.parent.relative_to(configs_dir).as_posix()
        if group not in (".", "recipe"):
            groups.setdefault(group, []).append(path.stem)
    return groups


def help_text(configs_dir: Path, recipes_dir: Path, docs_dir: Path | None = None) -> str:
    """align's `--help`: usage, each recipe with one line, the config groups and their options, where the docs are."""
    lines = [_USAGE, "", "recipes (recipe=NAME; each file opens with the exact command that runs it):"]
    for path in sorted(recipes_dir.glob("*.yaml")):
        lines += [f"  {path.stem}", f"    {recipe_summary(path)}"]
    lines += ["", "config groups (GROUP=OPTION):"]
    lines += [textwrap.fill(", ".join(options), width=118, initial_indent=f"  {group + ':':<16}",
                            subsequent_indent=" " * 18) for group, options in config_groups(configs_dir).items()]
    docs = f"{docs_dir}/ (getting-started.md first)" if docs_dir and docs_dir.is_dir() else \
        "README.md and docs/ in the align repository"
    lines += ["", f"docs: {docs}",
              "more: --cfg job prints the composed config; --hydra-help shows Hydra's own help and flags."]
    return "\n".join(lines)
