"""The one entry point: compose the config, check it, build everything, train.

    python -m align.train recipe=<name> [key=value ...]              # one process
    accelerate launch --config_file launch/accelerate/zero3.yaml -m align.train recipe=<name> ...
    align-train recipe=/path/to/my_recipe.yaml trainer.max_steps=10   # a recipe of your own

A run reads as a sequence of steps, each of which fails early with a message that names the problem:
config validation -> data -> reward preflight -> tokenizer -> [SFT warm start] -> model -> train -> save + plot.
Everything a run writes lands in one run directory shared by all ranks: the resolved config, checkpoints, the final
model (safetensors, loadable with `from_pretrained`), held-out results and a plot.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from align.config import (
    AlignConfig,
    ConfigError,
    DataConfig,
    FGRPOAlgorithmConfig,
    FHALAlgorithmConfig,
    GRPOAlgorithmConfig,
    MultiRefDPOAlgorithmConfig,
    RewardModelAlgorithmConfig,
    SAGEAlgorithmConfig,
    SFTAlgorithmConfig,
    hydra_multirun,
    register_configs,
    unknown_key_message,
    validate,
)
from align.console import (
    DPO_COLUMNS,
    GRPO_COLUMNS,
    REWARD_MODEL_COLUMNS,
    SFT_COLUMNS,
    describe_launch,
    help_text,
    quiet_dependencies,
)
from align.distributed import decided_by_main
from align.tracking import redact_override, redact_text

log = logging.getLogger("align")

# In a clone these are symlinks to the repository's configs/ and recipes/; a wheel carries them as package data.
CONFIGS_DIR = Path(__file__).parent / "_configs"
RECIPES_DIR = Path(__file__).parent / "_recipes"


class RunFinished(Exception):
    """resume=auto found the run already finished with nothing more to train: not an error (a requeued job that
    completed meanwhile ends here with status 0)."""


class RecipeError(ValueError):
    """`recipe=` names no recipe; the message lists the available ones."""


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _user_recipe_root(path: Path, name: str) -> Path:
    """A search-path root holding `recipe/<name>.yaml` -> the user's file, so Hydra composes it like a built-in."""
    from align.files import cache_dir  # not align.models: torch, seconds before a config error could print

    root = cache_dir() / "user-recipes" / hashlib.sha256(str(path).encode()).hexdigest()[:12]
    link = root / "recipe" / f"{name}.yaml"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != path:
        # Every rank of a launch gets here at once: build the link under a private name, then rename atomically.
        staging = link.with_name(f".{name}.{os.getpid()}.yaml")
        staging.unlink(missing_ok=True)
        staging.symlink_to(path)
        os.replace(staging, link)
    return root


def _check_recipe_file(path: Path) -> None:
    """A recipe of one's own must be a YAML mapping under Hydra's `# @package _global_` header: without the header
    Hydra nests the file under `recipe` and refuses each of its keys ("Key 'recipe' not in 'AlignConfig'")."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        content = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"Recipe file '{path}' is not valid YAML{where}: {getattr(err, 'problem', None) or err}."
                          ) from None
    if content is not None and not isinstance(content, dict):
        raise RecipeError(f"Recipe file '{path}' must be a mapping of config keys (e.g. `trainer: {{max_steps: 10}}`), "
                          f"not a {type(content).__name__}.")
    header = [line.strip() for line in text.splitlines() if line.strip()]
    header = header[:next((i for i, line in enumerate(header) if not line.startswith("#")), len(header))]
    if not any(line.replace(" ", "") == "#@package_global_" for line in header):
        raise RecipeError(f"Recipe file '{path}' lacks the header line '# @package _global_'; add it as the first "
                          f"line (a recipe sets keys of the whole config, such as trainer.max_steps).")


def resolve_recipe_args(argv: list[str]) -> list[str]:
    """Check `recipe=` before Hydra runs; turn a recipe given as a file path into a Hydra search-path entry."""
    resolved = []
    for arg in argv:
        if not arg.startswith("recipe="):
            resolved.append(arg)
            continue
        value = arg.split("=", 1)[1]
        if value.endswith((".yaml", ".yml")) or "/" in value:
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise RecipeError(f"Recipe file '{value}' does not exist.")
            _check_recipe_file(path)
            name = path.stem if path.stem not in available_recipes() else f"{path.stem}-user"
            resolved += [f"recipe={name}", f"hydra.searchpath=[file://{_user_recipe_root(path, name)}]"]
            continue
        known = available_recipes()
        for name in value.split(","):  # a comma-separated list sweeps over recipes in multirun mode
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise RecipeError(f"Unknown recipe '{name}'.{hint} Available recipes: {', '.join(known)}. "
                                  f"A recipe can also be a path to your own YAML file.")
        resolved.append(arg)
    return resolved


def check_config(overrides: list[str], multirun: bool = False) -> None:
    """Compose and `validate` the run's config before Hydra starts it (seconds before any heavy import), or every
    point of a multirun sweep (the basic sweeper's cartesian product of `overrides`) before it launches any; raise
    ConfigError naming the key, and in a sweep the first bad point by its swept values. A point's process count is
    its Slurm launcher's nodes x tasks_per_node, else this launch's."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import open_dict

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(override_syntax_problem(overrides) or composition_error(err)) from None
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()} if multirun else set()
    points = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [overrides]
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        if multirun:  # Hydra composes the fixed overrides as given, before the sweeper keeps the last of a repeated key
            try:
                compose(config_name="config", overrides=[o.input_line for o in parsed if not o.is_sweep_override()])
            except HydraException as err:  # e.g. `+key=a +key=b`
                raise ConfigError(composition_error(err)) from None
        for number, point in enumerate(points):
            values = " ".join(redact_override(o) for o in point if o.split("=", 1)[0] in swept)
            where = f"sweep point {number} ({values}): " if multirun else ""
            try:
                cfg = compose(config_name="config", overrides=point, return_hydra_config=True)
                launcher = cfg.hydra.launcher
                processes = launcher.nodes * launcher.tasks_per_node if multirun and "tasks_per_node" in launcher \
                    else None
                with open_dict(cfg):
                    del cfg["hydra"]
                validate(OmegaConf.to_object(cfg), processes=processes, in_sweep=multirun)
            except ConfigError as err:
                raise ConfigError(f"{where}{err}") from None
            except HydraException as err:
                raise ConfigError(f"{where}{composition_error(err)}") from None


def override_syntax_problem(overrides: list[str]) -> str | None:
    """Why overrides that Hydra cannot parse are not setting=value, when a space explains it: one around '=' that
    the shell split off (`key= 3` arrives as `key=` and `3`, `key =3` as `key` and `=3`) or one inside a quoted
    key (`'key =3'`); else None. Values are redacted."""
    for override, following in zip(overrides, [*overrides[1:], ""]):
        key, equals, value = override.partition("=")
        if equals and " " in key:  # Hydra's keys never hold a space
            where, fixed = "before '='", key.replace(" ", "") + "=" + value
        elif equals and not value and following and "=" not in following and not following.startswith("-"):
            where, fixed = "after '='", override + following
        elif not equals and following.startswith("=") and not override.startswith(("-", "~")):
            where, fixed = "before '='", override + following
        else:
            continue
        shown = redact_override(fixed)
        shown = shown.replace("=", "= " if where == "after '='" else " =", 1)
        return f"override '{shown}' is not setting=value (a space {where}?); write {redact_override(fixed)}."
    return None


def composition_error(err: Exception) -> str:
    """One line for a Hydra composition error: an unknown key with the closest setting, a new key of an open dict
    given without its '+', an unknown config group option with the closest one, else Hydra's message. The
    OmegaConf error is the exception's cause, or (a key set in a recipe file) only its context."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.options and "/" in (err.missing_cfg_file or ""):
        return unknown_option_message(err.missing_cfg_file, err.options)
    cause = err.__cause__ or err.__context__
    if not (isinstance(cause, OmegaConfBaseException) and cause.full_key):
        return " ".join(str(err).split())
    message = str(err)
    where = f"{message.split(chr(39))[1]}: " if message.startswith("In '") else ""  # the file that sets the key
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type):
        return where + unknown_key_message(cause.full_key, cause.object_type)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.object_type is dict:
        key = cause.full_key.replace("[", ".").replace("]", "")
        return (f"{where}{cause.full_key} is a new key of an open dict: add it with a leading '+' "
                f"(+{key}=VALUE).")
    return f"{where}{cause.full_key}: {str(cause).splitlines()[0]}."


def unknown_option_message(missing: str, options: list[str]) -> str:
    """`group=name` names no option of a config group (`missing` is Hydra's 'group/name'): the closest option and
    the list, without the typed schemas that Hydra lists too (`*_schema`, not meant to be chosen)."""
    group, _, name = missing.rpartition("/")
    choices = [option for option in options if not option.endswith("_schema")]
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]}?" if close else "."
    return f"{group}={name}: no such option{hint} Options: {', '.join(choices)}."


# --------------------------------------------------------------------------------------------------------------------


def _hydra_context() -> tuple[str | None, int | None, str | None]:
    """(recipe choice, multirun job number, sweep directory name) under Hydra; the last two only in a multirun."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, None, None
    recipe = HydraConfig.get().runtime.choices.get("recipe")
    sweep = hydra_multirun()
    return (recipe, None, None) if sweep is None else (recipe, sweep.job.num, Path(sweep.sweep.dir).name)


def shared_run_dir(config: AlignConfig, state) -> tuple[Path, str]:
    """Run directory and name, chosen on rank 0 and broadcast so every rank writes to the same place.

    Default name: <recipe or algorithm>-<timestamp>; in a multirun sweep <recipe or algorithm>-<sweep dir name>
    (whose timestamp is fixed at submission, so a requeued point finds its directory again). Each point of a sweep
    gets its job number appended (to the name, or as a subdirectory of an explicit output_dir). Refused on every
    rank: a non-empty directory that holds no align run (align never writes into someone else's files), and one
    whose run already started, unless resume=auto continues it with the same run-defining settings. A directory
    whose run failed before training began is reused.
    """
    def decide() -> tuple[str, str, str | None]:  # directory, name, error
        directory, name = _planned_run_dir(config)
        return str(directory.resolve()), name, _run_dir_problem(directory, config)

    directory, name, error = decided_by_main(state.is_main_process, state.num_processes, decide)
    if error:
        raise ConfigError(error)
    return Path(directory), name


def _planned_run_dir(config: AlignConfig) -> tuple[Path, str]:
    """(directory, name) of this run as `shared_run_dir` describes them; a default name holds this second."""
    t = config.trainer
    recipe, job, sweep = _hydra_context()
    name = t.run_name or f"{recipe or config.algorithm.name}-{sweep or time.strftime('%Y%m%d-%H%M%S')}"
    name = name if job is None else f"{name}-{job}"
    directory = Path(t.output_dir) / (str(job) if job is not None else "") if t.output_dir else \
        Path(t.output_root) / name
    return directory, name


def check_run_dir(config: AlignConfig) -> None:
    """Refuse a run directory this run may not write into (ConfigError), before anything loads. Every rank checks
    for itself (they see the same files); `shared_run_dir` checks rank 0's choice again when it opens the run."""
    problem = _run_dir_problem(_planned_run_dir(config)[0], config)
    if problem:
        raise ConfigError(problem)


def _run_dir_problem(directory: Path, config: AlignConfig) -> str | None:
    """Why this run may not write into `directory`, or None."""
    from align.run_dir import RunDir, run_dir_kind

    blocker = next((path for path in (directory, *directory.parents) if path.exists()), None)
    if blocker is not None and not blocker.is_dir():  # a file where the run directory, or a folder above it, goes
        key = "trainer.output_dir" if config.trainer.output_dir else "trainer.output_root"
        return f"{key}: {blocker} is a file, not a directory; choose a new or empty directory."
    kind = run_dir_kind(directory)
    if kind is RunDir.FOREIGN and config.trainer.output_dir:
        return f"trainer.output_dir {directory} is not empty and holds no align run; choose an empty or new directory."
    if kind is RunDir.FOREIGN:
        return (f"run directory {directory} is not empty and holds no align run; choose another trainer.run_name or "
                f"trainer.output_root.")
    if kind is RunDir.STARTED and config.resume == "auto":
        return _changed_run_settings(directory / "config.yaml", config) or _finished_run_problem(directory, config)
    if kind is RunDir.STARTED:
        return (f"run directory {directory} already holds a run; continue it with resume=auto, or choose another "
                f"trainer.run_name or trainer.output_dir.")
    return None


def _finished_run_problem(directory: Path, config: AlignConfig) -> str | None:
    """For resume=auto on a finished run: RunFinished when trainer.max_steps asks for nothing more; an error when it
    asks for more but no checkpoint can continue it (training from scratch would replace the finished model)."""
    from align.checkpoints import checkpoints, is_complete
    from align.run_dir import finished_step

    step = finished_step(directory)
    if step is None:
        return None
    if config.trainer.max_steps <= step:
        raise RunFinished(f"[align] resume=auto: the run in {directory} already finished at step {step} (final "
                          f"model: {directory / 'final'}); nothing to do. Raise trainer.max_steps to train further.")
    if not any(is_complete(path) for _, path in checkpoints(directory)):
        return (f"resume=auto: the run in {directory} finished at step {step} without a checkpoint to continue from "
                f"(trainer.save_steps was 0), so trainer.max_steps={config.trainer.max_steps} cannot continue it; "
                f"start a new run from its final model: model.path={directory / 'final'}.")
    return None


def eval_task_name(data: DataConfig) -> str:
    """The task name held-out results are filed under: the data source (and subset / synthetic task)."""
    if data.source == "synthetic":
        return f"synthetic/{data.synthetic.task}"
    return data.source + (f"/{data.subset}" if data.subset else "")


def _gate_final_against_start(run_dir: Path, alpha: float) -> dict:
    """Degradation gate of the final model against the starting one on the held-out items; writes gate.json and
    gate.md into the run directory and prints the verdict. Reporting only: the run's exit status is not changed."""
    from align.gate.align_results import step_files
    from align.gate.cli import run_gate, write_reports
    from align.gate.samples import GateInputError

    files = step_files(run_dir)  # step 0 is the starting model even when this attempt resumed later
    first, last = min(files), max(files)
    try:
        report = run_gate([files[first]], [files[last]], alpha=alpha)
    except (GateInputError, ValueError, OSError) as err:  # e.g. eval settings changed between resumed attempts
        log.warning("degradation gate skipped: %s", err)
        return {"error": str(err)}
    write_reports(report, run_dir / "gate.json", run_dir / "gate.md")
    verdict = "DEGRADED" if report["degraded"] else "no significant degradation"
    print(f"[align] degradation gate, step {last} vs step {first}: {verdict} (one-sided p = {report['p_value']:.4g}, "
          f"alpha {alpha}); report: {run_dir / 'gate.md'}", flush=True)
    return {"degraded": report["degraded"], "p_value": report["p_value"], "report": str(run_dir / "gate.md")}


def _audit_final_against_start(config: AlignConfig, start: str, run_dir: Path) -> dict:
    """Effective-rank audit (align.audit) of the final model against `start` into <run_dir>/audit/. Reporting only:
    a failure is a warning, and the run's exit status is not changed."""
    from align.audit import report as audit_report
    from align.audit.prompts import AuditInputError
    from align.audit.run import AuditConfig, run_audit
    from align.models import ModelLoadError, bf16_available

    cfg = AuditConfig(base=start, aligned=str(run_dir / "final"), target=config.eval.audit_target,
                      control=config.eval.audit_control, dtype="bfloat16" if bf16_available() else "float32",
                      trust_remote_code=config.model.trust_remote_code)
    try:
        audit_report.write(run_audit(cfg, run_dir / "audit"), run_dir / "audit")
    except (AuditInputError, ModelLoadError, OSError, ValueError) as err:  # e.g. an unreadable checkpoint
        log.warning("activation audit skipped: %s", err)
        return {"error": str(err)}
    print(f"[align] activation audit (final vs start): {run_dir / 'audit' / audit_report.MARKDOWN}", flush=True)
    return {"report": str(run_dir / "audit" / audit_report.MARKDOWN)}


# Settings that define what a run computes, or the data order a checkpoint's position refers to: resuming with any of
# them changed would silently mix two experiments. The rest of trainer.* (e.g. a larger max_steps to train further,
# save_steps), eval, logger and resume may change between attempts.
_RUN_DEFINING = ("model", "data", "algorithm", "reward", "warm_start", "trainer.seed",
                 "trainer.per_device_train_batch_size", "trainer.gradient_accumulation_steps")


def _changed_run_settings(saved_config: Path, config: AlignConfig) -> str | None:
    """An error message when resuming `saved_config`'s run with settings that change what it computes, else None."""
    from align.tracking import redact

    saved = OmegaConf.load(saved_config)
    current = OmegaConf.create(redact(OmegaConf.to_container(OmegaConf.structured(config), resolve=True)))
    changed = [key for key in _RUN_DEFINING
               if OmegaConf.select(saved, key, default=None) != OmegaConf.select(current, key, default=None)]
    if not changed:
        return None
    return (f"resume=auto: the run in {saved_config.parent} was started with different {', '.join(changed)} "
            f"settings (see its config.yaml); resuming would mix two experiments. Use the same settings, or another "
            f"trainer.run_name for a new run.")


def _resume_checkpoint(config: AlignConfig, run_dir: Path, state, stage: str = "") -> str | None:
    """With resume=auto, the newest complete checkpoint in `run_dir` (chosen on rank 0, shared), else None; `stage`
    names what it continues in the announcement (e.g. "the warm start")."""
    from align.checkpoints import COMPLETE_MARKER, newest_complete_checkpoint

    if config.resume != "auto":
        return None

    def decide() -> tuple[str | None, str | None]:  # checkpoint, error
        newest = newest_complete_checkpoint(run_dir)
        processes = json.loads((newest / COMPLETE_MARKER).read_text()).get("processes") if newest else None
        if processes not in (None, state.num_processes):
            return None, (f"resume=auto: {newest} was written by {processes} processes, this launch has "
                          f"{state.num_processes}; optimizer shards and the data split across ranks depend on it. "
                          f"Launch {processes} processes to resume.")
        print(f"[align] resume=auto: continuing {stage + ' ' if stage else ''}from {newest.name}" if newest else
              "[align] resume=auto: no complete checkpoint yet, starting from the beginning", flush=True)
        return str(newest) if newest else None, None

    checkpoint, error = decided_by_main(state.is_main_process, state.num_processes, decide)
    if error:
        raise ConfigError(error)
    return checkpoint


def _train(trainer, checkpoint: str | None, run_dir: Path, phase: str = "training",
           end_phase: str = "the final evaluation") -> None:
    """`trainer.train()` from `checkpoint` (or the start). A stop signal ends it at the next step boundary that can
    be checkpointed, or after its `on_train_end` work (`end_phase`: align's final held-out evaluation), and raises
    `Stopped` once that step's checkpoint is kept (`_stop_if_requested`)."""
    from align.preemption import STOP, Preemption
    from align.run_dir import mark_started

    if trainer.accelerator.is_main_process:
        mark_started(run_dir)
    # Right after the Trainer's flow callback: callbacks that evaluate at step ends see the stop and skip.
    trainer.callback_handler.callbacks.insert(1, Preemption(getattr(trainer, "checkpoint_step_multiple", 1),
                                                            end_phase=end_phase))
    STOP.phase = phase
    trainer.train(resume_from_checkpoint=checkpoint)
    _stop_if_requested(trainer)


def _stop_if_requested(trainer) -> None:
    """A phase boundary after training (or its final evaluation): on a stop request, keep a complete checkpoint of
    the current step, which the `Preemption` callback saved, or saved now for a signal that came after the last
    step, and raise `Stopped`. A resume from it trains no further and redoes only what came after training."""
    from align.checkpoints import is_complete
    from align.preemption import STOP

    def keep() -> str:
        folder = Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        accelerator = trainer.accelerator  # rank 0's view: it writes the marker
        if decided_by_main(accelerator.is_main_process, accelerator.num_processes, lambda: not is_complete(folder)):
            trainer._save_checkpoint(trainer.model_wrapped, trial=None)  # what the Trainer calls at a save step
        return str(folder)

    STOP.check(keep)


def _kept(run_dir: Path) -> str:
    """What a resume of the run in `run_dir` continues from, in words (for the line a stop ends with)."""
    from align.checkpoints import checkpoints, is_complete

    complete = [path for _, path in checkpoints(run_dir) if is_complete(path)]
    if complete:
        return str(complete[-1])
    if (run_dir / "warm_start" / "final").is_dir():
        return f"the warm-started model {run_dir / 'warm_start' / 'final'} (no training checkpoint yet)"
    return f"the run directory {run_dir} (no checkpoint yet)"


def _stopped_summary(cfg: DictConfig, stopped) -> dict:
    """End a run that a stop signal stopped: trackers flushed, one line from rank 0, the job requeued where SIGUSR1
    asked for it under Slurm; the summary carries the exit status every rank ends with."""
    from align.methods.common import distributed_state
    from align.preemption import after_stop
    from align.tracking import finish_tracking

    if os.environ.get("SLURM_JOB_ID"):
        # A requeue (or the preemption itself) sends SIGTERM to every task, SIGKILL after KillWait: it must not
        # kill a process before the tracker is flushed and the process group left cleanly.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = distributed_state()
    finish_tracking(cfg.logger, state.is_main_process)
    state.wait_for_everyone()
    def decide() -> int:
        code, next_step = after_stop(stopped.requeue, stopped.interrupted)
        print(f"[align] {stopped}; {next_step}", flush=True)
        return code

    # One status for all: srun --kill-on-bad-exit would end rank 0 early otherwise.
    code = decided_by_main(state.is_main_process, state.num_processes, decide)
    return {"stopped_during": stopped.phase, "kept": stopped.kept, "exit_code": code}


def _required_columns(config: AlignConfig) -> dict[str, str | None]:
    """The columns the run reads -> the setting that names each (None: a canonical column, mapped by data.columns)."""
    from align.rewards import BUILTIN_REWARDS

    algo = config.algorithm
    if isinstance(algo, SFTAlgorithmConfig):
        return {"prompt": None, algo.completion_column: "algorithm.completion_column"}
    columns = {"prompt": None}
    # A built-in that takes an `answer` argument checks against the answer column (format_boxed does not).
    builtins = [BUILTIN_REWARDS[s.name] for s in config.reward.sources if s.name in BUILTIN_REWARDS]
    if config.eval.enabled or any("answer" in inspect.signature(fn).parameters for fn in builtins):
        columns["answer"] = None
    if config.warm_start.max_steps:
        columns.setdefault(config.warm_start.completion_column, "warm_start.completion_column")
        if config.warm_start.hints_column:
            columns.setdefault(config.warm_start.hints_column, "warm_start.hints_column")
    return columns


def _check_reference_solutions(config: AlignConfig, train_dataset) -> None:
    """SAGE hints from a reference-solution column: it must exist, and some rows must fill it (others may not)."""
    from align.data import DataError

    column = config.algorithm.hint.solution_column
    if column not in train_dataset.column_names:
        raise DataError(f"SAGE writes hints from reference solutions, but the training data has no '{column}' "
                        f"column (columns: {', '.join(train_dataset.column_names)}). Map one with "
                        f"data.columns.solution=<column> or set algorithm.hint.solution_column.")
    with_solution = sum(1 for value in train_dataset[column] if value)
    if with_solution == 0:
        raise DataError(f"Every row's '{column}' is empty, so SAGE would never hint; use algorithm=grpo or fill it.")
    if with_solution < len(train_dataset):
        log.warning("%d of %d training rows have no '%s'; they train without hints.",
                    len(train_dataset) - with_solution, len(train_dataset), column)


def _peft_config(config: AlignConfig):
    lora = config.model.lora
    if not lora.r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def _save_final(trainer, tokenizer, directory: Path) -> None:
    """HF-format export: safetensors weights (a LoRA run: its adapter) + tokenizer, and the trainer state."""
    from align.checkpoints import disk_full_reported

    with disk_full_reported(directory, Path(trainer.args.output_dir)):
        trainer.save_model(str(directory))  # collective under ZeRO-3; writes on the main process
        if trainer.accelerator.is_main_process:
            tokenizer.save_pretrained(directory)
            # A pickle of TrainingArguments: config.yaml already records them, and exports stay pickle-free.
            (directory / "training_args.bin").unlink(missing_ok=True)
        trainer.save_state()


def _mark_finished(trainer, run_dir: Path) -> None:
    """The final model is exported: a later resume=auto of this run has nothing to redo at this max_steps."""
    from align.run_dir import mark_finished

    if trainer.accelerator.is_main_process:
        mark_finished(run_dir, trainer.state.global_step)


def _warm_start(config: AlignConfig, model_path: str, tokenizer, train_dataset, run_dir: Path, run_name: str,
                state) -> str:
    """SFT on reference solutions; returns the path of the warm-started model, `warm_start/final`, which appears
    (by a rename) only once complete. A stop signal ends the warm start at a step boundary with a checkpoint in
    `warm_start/` and raises `Stopped`; with resume=auto the next attempt continues from that checkpoint, or reuses
    `warm_start/final` when the warm start had finished."""
    from align.checkpoints import checkpoints
    from align.methods.common import training_arguments
    from align.methods.sft.trainer import build_sft_trainer, to_prompt_completion
    from align.models import load_causal_lm
    from align.preemption import STOP
    from align.progress import show_progress

    w = config.warm_start
    stage_dir = run_dir / "warm_start"
    final = stage_dir / "final"
    if final.is_dir():  # an earlier attempt of this run (resume=auto) finished the warm start
        if state.is_main_process:
            print(f"[align] resume=auto: the warm start is complete, training starts from {final}", flush=True)
        return str(final)
    STOP.phase = "the warm start"
    checkpoint = _resume_checkpoint(config, stage_dir, state, stage="the warm start") if checkpoints(stage_dir) \
        else None
    common = training_arguments(config, stage_dir, report_to=[], run_name=f"{run_name}-warm-start")
    common.update(max_steps=w.max_steps, learning_rate=w.learning_rate, save_strategy="no",
                  per_device_train_batch_size=w.per_device_train_batch_size, lr_scheduler_type="cosine",
                  warmup_steps=min(10, w.max_steps // 10), gradient_accumulation_steps=1)
    model = load_causal_lm(model_path, dtype=config.model.dtype, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code)
    dataset = to_prompt_completion(train_dataset, w.completion_column)
    if w.hints_column:
        from datasets import concatenate_datasets

        from align.data import rows_to_dataset
        from align.methods.sage.trainer import hint_demonstrations

        demos = hint_demonstrations(train_dataset.to_list(), config.algorithm.hint, w.hints_column,
                                    seed=config.trainer.seed)
        dataset = concatenate_datasets([dataset, rows_to_dataset(demos)]).shuffle(seed=config.trainer.seed)
    trainer = build_sft_trainer(model, tokenizer, dataset, None, max_length=1024, common_args=common)
    show_progress(trainer, SFT_COLUMNS, label="warm start")
    log.info("warm start: SFT for %d steps on '%s'%s", w.max_steps, w.completion_column,
             f" + hint writing and hinted solving from '{w.hints_column}'" if w.hints_column else "")
    _train(trainer, checkpoint, run_dir, phase="the warm start", end_phase="the warm start")
    staging = stage_dir / ".final-incomplete"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # an earlier attempt's export, cut short
    _save_final(trainer, tokenizer, staging)
    state.wait_for_everyone()
    if state.is_main_process:
        staging.rename(final)
        for _, path in checkpoints(stage_dir):  # only a resume of the warm start needed them
            shutil.rmtree(path)
    state.wait_for_everyone()
    return str(final)


def _open_run(config: AlignConfig, cfg: DictConfig, detail: str = ""):
    """(process state, run directory, run name, trackers): the shared run directory with the resolved config
    (credentials redacted) written by rank 0, announced once with `detail` appended, and tracking started."""
    from align.methods.common import distributed_state
    from align.run_dir import claim_run_dir
    from align.tracking import redact, start_tracking

    state = distributed_state()
    run_dir, run_name = shared_run_dir(config, state)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    if state.is_main_process:
        claim_run_dir(run_dir)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        launch = describe_launch(state.num_processes, state.distributed_type.value, state.device.type,
                                 os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"))
        print(f"[align] run directory: {run_dir} ({launch}){detail}", flush=True)
    return state, run_dir, run_name, start_tracking(config.logger, run_dir, run_name, resolved, state.is_main_process,
                                                    resumable=config.resume == "auto")


def run(cfg: DictConfig) -> dict:
    """Train as configured; return a summary (run_dir, held-out accuracy before/after, final model path).

    Stop signals are handled from here to the end (`align.preemption`): a stopped run keeps what it can resume
    from and returns `{"stopped_during": phase, "kept": what, "exit_code": status}` instead."""
    config: AlignConfig = OmegaConf.to_object(cfg)
    # Validated before anything heavy is imported (align.preemption and the builders load torch, transformers and
    # TRL: seconds): a config error is printed at once.
    validate(config)
    check_run_dir(config)
    quiet_dependencies(config.logger.backend)  # before those imports too: some of the noise is printed by one
    from align.preemption import STOP, Stopped

    with STOP.installed():
        try:
            summary = _run(config, cfg)
        except Stopped as stopped:
            return _stopped_summary(cfg, stopped)
        if STOP.signum and "final_model" in summary:  # it came after the last boundary: the run completed anyway
            from align.methods.common import distributed_state

            if distributed_state().is_main_process:
                print(f"[align] received {signal.Signals(STOP.signum).name} while finishing; the run is complete "
                      f"(final model: {summary['final_model']}), nothing to resume", flush=True)
        return summary


def _run(config: AlignConfig, cfg: DictConfig) -> dict:
    import torch
    from transformers import set_seed

    from align.data import load_splits
    from align.evaluation import HeldOutAccuracy
    from align.methods.common import training_arguments
    from align.models import check_lora_targets, load_causal_lm, load_tokenizer, resolve_model_path
    from align.plotting import plot_training_curves
    from align.preemption import STOP
    from align.progress import show_progress
    from align.rewards import build_reward_sources, guard, preflight, resolve_reward
    from align.tracking import finish_tracking

    resolve_model_path(config.model.path)  # a missing local path fails here, before anything is loaded
    if config.model.lora.r:
        check_lora_targets(config.model.path, config.model.lora.target_modules, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code)
    # Seeded before any model is built: freshly initialised weights (a reward model's head, LoRA adapters) depend on
    # trainer.seed alone, not on whatever ran before in this process (the Trainer seeds only once it exists).
    set_seed(config.trainer.seed)
    if isinstance(config.algorithm, RewardModelAlgorithmConfig):
        return _run_reward_model(config, cfg)
    if isinstance(config.algorithm, MultiRefDPOAlgorithmConfig):
        return _run_multiref_dpo(config, cfg)

    train_dataset, held_out = load_splits(config.data, required=_required_columns(config))
    if isinstance(config.algorithm, SAGEAlgorithmConfig):
        _check_reference_solutions(config, train_dataset)
    pairs = None
    if isinstance(config.algorithm, FHALAlgorithmConfig):  # f-HAL's offline pairs, loaded before any model
        from align.data.pairs import load_pairs

        pairs = load_pairs(config.algorithm.pairs)
    is_grpo = isinstance(config.algorithm, GRPOAlgorithmConfig)
    rewards, weights = build_reward_sources(config.reward.sources) if is_grpo else ([], [])
    if rewards:
        preflight(rewards, train_dataset.select(range(min(2, len(train_dataset)))).to_list())
    verifier = guard(resolve_reward(config.eval.metric), config.eval.metric) if config.eval.enabled else None
    if verifier is not None and held_out is None:
        log.warning("eval.enabled but the data has no held-out split (data.eval_split / data.eval_size); "
                    "held-out accuracy is skipped.")
        verifier = None
    tokenizer = load_tokenizer(config.model.path, revision=config.model.revision,
                               trust_remote_code=config.model.trust_remote_code,
                               chat_template=config.model.chat_template)

    state, run_dir, run_name, report_to = _open_run(config, cfg)
    checkpoint = _resume_checkpoint(config, run_dir, state)
    STOP.check(lambda: _kept(run_dir))  # a signal during start-up stops before any model is loaded

    model_path = config.model.path
    if config.warm_start.max_steps and checkpoint is None:
        model_path = _warm_start(config, model_path, tokenizer, train_dataset, run_dir, run_name, state)
    elif config.warm_start.max_steps:  # resuming: the warm-started model stays the base (and the KL reference)
        model_path = str(run_dir / "warm_start" / "final")
        if not (Path(model_path) / "config.json").is_file():
            raise ConfigError(f"resume=auto: {model_path} is missing, but this run's checkpoints were trained from "
                              f"its warm start; restore it, or start a new run (another trainer.run_name).")
    STOP.phase = "model loading"
    model = load_causal_lm(model_path, dtype=config.model.dtype, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code,
                           attn_implementation=config.model.attn_implementation,
                           load_in_4bit=config.model.load_in_4bit)

    common = training_arguments(config, run_dir, report_to, run_name)
    algo = config.algorithm
    if is_grpo:
        from align.methods.fgrpo.trainer import build_fgrpo_trainer
        from align.methods.grpo.trainer import build_grpo_trainer
        from align.methods.sage.trainer import build_sage_trainer

        extra = {}
        if isinstance(algo, SAGEAlgorithmConfig):
            build = build_sage_trainer
        elif isinstance(algo, FGRPOAlgorithmConfig):
            build, extra = build_fgrpo_trainer, {"pairs": pairs}
        else:
            build = build_grpo_trainer
        trainer = build(model, tokenizer, train_dataset, rewards, weights, algo, common,
                        log_completions=config.logger.log_completions,
                        trust_remote_code=config.model.trust_remote_code, peft_config=_peft_config(config), **extra)
    else:
        from align.methods.sft.trainer import build_sft_trainer

        trainer = build_sft_trainer(model, tokenizer, train_dataset, algo.completion_column, algo.max_length,
                                    common_args=common, trl_overrides=algo.trl, peft_config=_peft_config(config))
    show_progress(trainer, GRPO_COLUMNS if is_grpo else SFT_COLUMNS)

    heldout = None
    if verifier is not None:
        rows = held_out.select(range(min(config.eval.max_samples, len(held_out)))).to_list()
        heldout = HeldOutAccuracy(trainer, tokenizer, rows, verifier, run_dir, config.eval.max_new_tokens,
                                  config.eval.batch_size, config.eval.every_steps, task=eval_task_name(config.data),
                                  metric=config.eval.metric)
        trainer.add_callback(heldout)
    STOP.check(lambda: _kept(run_dir))

    _train(trainer, checkpoint, run_dir)
    _save_final(trainer, tokenizer, run_dir / "final")
    _mark_finished(trainer, run_dir)

    summary = {"run_dir": str(run_dir), "final_model": str(run_dir / "final")}
    if heldout is not None:
        summary.update(accuracy_before=heldout.history[0][1], accuracy_after=heldout.history[-1][1])
    if state.is_main_process:
        plot = plot_training_curves(trainer.state.log_history, heldout.history if heldout else [],
                                    run_dir / "curves.png", title=run_name)
        summary["plot"] = str(plot)
        if heldout is not None:
            print(f"[align] held-out accuracy (greedy, no hint): {summary['accuracy_before']:.3f} -> "
                  f"{summary['accuracy_after']:.3f}", flush=True)
            if config.eval.gate:
                summary["gate"] = _gate_final_against_start(run_dir, config.eval.gate_alpha)
        if config.eval.audit:
            summary["audit"] = _audit_final_against_start(config, model_path, run_dir)
        print(f"[align] final model: {summary['final_model']}\n[align] plot: {plot}", flush=True)
    finish_tracking(config.logger, state.is_main_process)
    state.wait_for_everyone()
    del model, trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def _run_reward_model(config: AlignConfig, cfg: DictConfig) -> dict:
    """Train a reward model: data -> tokenizer -> run dir -> model -> held-out metrics before -> train -> after -> save.

    The final model is a sequence-classification checkpoint (safetensors) whose config.json records the objective,
    the head and what scoring needs (anchor thresholds, noise rates); `reward=reward_model` scores with it."""
    from align.data.preferences import load_reward_data
    from align.methods.common import training_arguments
    from align.methods.reward_model.trainer import build_reward_model_trainer, load_reward_model
    from align.models import load_tokenizer
    from align.preemption import STOP
    from align.progress import show_progress

    algo = config.algorithm
    train_rows, held_out_rows, info = load_reward_data(algo.data, algo.objective)
    tokenizer = load_tokenizer(config.model.path, revision=config.model.revision,
                               trust_remote_code=config.model.trust_remote_code,
                               chat_template=config.model.chat_template)
    rows = f"; {len(train_rows)} training rows" + (f", {len(held_out_rows)} held out" if held_out_rows else "")
    ties = f"; {info['dropped_ties']} tied pairs dropped" if info.get("dropped_ties") else ""
    state, run_dir, run_name, report_to = _open_run(config, cfg, rows + ties)
    STOP.phase = "model loading"
    model = load_reward_model(config.model.path, algo.objective, dtype=config.model.dtype,
                              revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                              attn_implementation=config.model.attn_implementation)
    common = training_arguments(config, run_dir, report_to, run_name)
    trainer = build_reward_model_trainer(model, tokenizer, train_rows, held_out_rows, algo, common)
    show_progress(trainer, REWARD_MODEL_COLUMNS)
    return _train_and_report(trainer, tokenizer, config, state, run_dir, run_name,
                             ("eval_accuracy", "eval_auc", "eval_brier", "eval_cross_entropy", "eval_sigma_mean"))


def _train_and_report(trainer, tokenizer, config: AlignConfig, state, run_dir: Path, run_name: str,
                      metrics: tuple[str, ...]) -> dict:
    """Train, evaluate on the held-out data (before: from `eval_on_start`, since an `evaluate()` before `train()`
    leaves DeepSpeed's engine unset), save the final model, plot, print `metrics` before -> after; the summary."""
    from align.plotting import plot_training_curves
    from align.preemption import STOP
    from align.tracking import finish_tracking

    STOP.check(lambda: _kept(run_dir))  # the model is loaded
    _train(trainer, _resume_checkpoint(config, run_dir, state), run_dir)
    STOP.phase = "the final evaluation"
    after = trainer.evaluate() if trainer.eval_dataset is not None else {}
    _stop_if_requested(trainer)
    before = next((entry for entry in trainer.state.log_history if any(key in entry for key in metrics)), {})
    _save_final(trainer, tokenizer, run_dir / "final")
    _mark_finished(trainer, run_dir)
    summary = {"run_dir": str(run_dir), "final_model": str(run_dir / "final"),
               "eval_before": before, "eval_after": after}
    if state.is_main_process:
        plot = plot_training_curves(trainer.state.log_history, [], run_dir / "curves.png", title=run_name)
        summary["plot"] = str(plot)
        for key in metrics:
            if key in after and key in before:
                name = key.removeprefix("eval_").replace("_", " ")
                print(f"[align] held-out {name}: {before[key]:.4f} -> {after[key]:.4f}", flush=True)
        print(f"[align] final model: {summary['final_model']}\n[align] plot: {plot}", flush=True)
    finish_tracking(config.logger, state.is_main_process)
    state.wait_for_everyone()
    return summary


def _check_references(references) -> None:
    """Each reference resolves and has a chat template: fail before any reference is loaded and scored."""
    from align.methods.multiref_dpo.references import pinned_revision
    from align.models import ModelLoadError, load_tokenizer

    for i, reference in enumerate(references):
        try:
            revision = pinned_revision(reference.path, reference.revision)
            load_tokenizer(reference.path, revision=revision, trust_remote_code=reference.trust_remote_code,
                           chat_template=reference.chat_template)
        except ModelLoadError as err:
            message = str(err).replace("model.chat_template", f"algorithm.references[{i}].chat_template")
            raise ModelLoadError(f"algorithm.references[{i}] ('{reference.path}'): {message}") from None


def _precompute_references(references, splits: dict[str, list[dict]], algo, announce: bool) -> dict[str, list]:
    """Split name -> one ReferenceLogps per reference: each reference loaded at most once (none on a cache hit),
    one at a time, and scoring every split. A stop signal ends the run once the reference being scored is cached."""
    from align.methods.multiref_dpo.references import reference_logps
    from align.models import cache_dir
    from align.preemption import STOP

    directory = Path(algo.cache_dir).expanduser() if algo.cache_dir else cache_dir() / "reference_logps"
    STOP.phase = "reference scoring"
    _check_references(references)
    scored = {name: [] for name in splits}
    for k, reference in enumerate(references, 1):
        results = reference_logps(reference, splits, normalize=algo.length_normalize,
                                  batch_size=algo.precompute_batch_size, cache_dir=directory)
        for name, result in results.items():
            scored[name].append(result)
            if announce:
                how = "cache hit" if result.cache_hit else f"computed ({result.seconds:.1f} s for all splits)"
                print(f"[align] reference {k}/{len(references)} {reference.name} ({name}, {len(splits[name])} "
                      f"pairs): {how} -> {result.cache_file}", flush=True)
        STOP.check(lambda k=k: f"the log-probs of {k} of {len(references)} references, cached in {directory}")
    return scored


def _run_multiref_dpo(config: AlignConfig, cfg: DictConfig) -> dict:
    """Multi-reference DPO: pairs -> policy tokenizer (long pairs dropped) -> validation carved from training ->
    run dir -> every reference's log-probs (cached) -> policy -> held-out preference accuracy before -> train ->
    after -> save."""
    from align.config import MULTIREF_NEEDS_VALIDATION, reference_models
    from align.data import DataError
    from align.data.preferences import load_reward_data
    from align.methods.common import training_arguments
    from align.methods.multiref_dpo.trainer import (
        build_multiref_dpo_trainer,
        carve_validation,
        pairs_dataset,
        tokenize_pairs,
    )
    from align.models import load_causal_lm, load_tokenizer
    from align.preemption import STOP
    from align.progress import show_progress

    algo = config.algorithm
    references = reference_models(algo)
    train_rows, held_out_rows, _ = load_reward_data(algo.data, "bradley_terry")
    tokenizer = load_tokenizer(config.model.path, revision=config.model.revision,
                               trust_remote_code=config.model.trust_remote_code,
                               chat_template=config.model.chat_template)
    train_rows, train_ids, dropped = tokenize_pairs(tokenizer, train_rows, algo.data.max_length)
    held_out_rows, held_out_ids, dropped_held_out = tokenize_pairs(tokenizer, held_out_rows or [],
                                                                   algo.data.max_length)
    try:
        train_idx, val_idx = carve_validation(len(train_rows), algo.validation_size)
    except ValueError as err:
        raise DataError(f"{err} ({dropped} pairs longer than algorithm.data.max_length {algo.data.max_length} were "
                        f"dropped)") from None
    splits = {"train": [train_rows[i] for i in train_idx]}
    if val_idx and algo.weighting in MULTIREF_NEEDS_VALIDATION:  # the others never read validation margins
        splits["validation"] = [train_rows[i] for i in val_idx]
    detail = (f"; {len(train_idx)} training pairs, {len(val_idx)} validation, {len(held_out_ids)} held out; "
              f"{len(references)} references")
    if dropped or dropped_held_out:
        detail += f"; {dropped + dropped_held_out} pairs over {algo.data.max_length} tokens dropped"
    state, run_dir, run_name, report_to = _open_run(config, cfg, detail)
    STOP.check(lambda: _kept(run_dir))  # a signal during start-up stops before any reference is scored

    scored = _precompute_references(references, splits, algo, state.is_main_process)
    train_dataset = pairs_dataset([train_ids[i] for i in train_idx], scored["train"])
    validation = pairs_dataset([train_ids[i] for i in val_idx], scored["validation"]) if "validation" in scored \
        else None
    held_out = pairs_dataset(held_out_ids) if held_out_ids else None

    STOP.phase = "model loading"
    model = load_causal_lm(config.model.path, dtype=config.model.dtype, revision=config.model.revision,
                           trust_remote_code=config.model.trust_remote_code,
                           attn_implementation=config.model.attn_implementation,
                           load_in_4bit=config.model.load_in_4bit)
    common = training_arguments(config, run_dir, report_to, run_name)
    trainer = build_multiref_dpo_trainer(model, tokenizer, train_dataset, algo, [r.name for r in references],
                                         common, validation=validation, eval_dataset=held_out,
                                         peft_config=_peft_config(config))
    show_progress(trainer, DPO_COLUMNS)
    return _train_and_report(trainer, tokenizer, config, state, run_dir, run_name, ("eval_preference_accuracy",))


register_configs()


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by the user's config, data or disk: reported as one readable line, exit code 2.

    Looked up only in modules already imported: an error whose module never loaded cannot have been raised, and
    importing those modules (torch, datasets) would add seconds to printing a config error."""
    elsewhere = (("align.data", "DataError"), ("align.models", "ModelLoadError"),
                 ("align.rewards", "RewardConfigError"), ("align.rewards", "RewardError"),
                 ("align.checkpoints", "DiskFullError"))
    return ConfigError, RecipeError, *(getattr(sys.modules[module], name) for module, name in elsewhere
                                       if module in sys.modules)


@hydra.main(config_path=str(CONFIGS_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from align.cluster import adopt_slurm_environment

    adopt_slurm_environment()  # under srun / the Slurm launcher: one process per task, rendezvous from Slurm
    try:
        summary = run(cfg)
    except RunFinished as finished:
        print(finished, flush=True)
        return
    except _user_errors() as err:
        print_error(err)
        sys.exit(2)
    if "stopped_during" in summary:
        # Exit, even with status 0 after a requeue: a normal return would make submitit record the point as done.
        shutdown_distributed()
        sys.exit(summary["exit_code"])


def print_error(err: Exception) -> None:
    """The one line a user error ends with, credentials redacted: a message may quote an override or a value."""
    print(f"align: error: {redact_text(str(err))}", file=sys.stderr, flush=True)


def shutdown_distributed() -> None:
    """Tear the process group down explicitly: left to interpreter exit, gloo's threads can abort the process
    ("terminate called without an active exception") after all work is done, failing the launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main() -> None:
    """Console entry point (`align-train`, `python -m align.train`)."""
    if not (CONFIGS_DIR / "config.yaml").is_file():
        sys.exit(f"align: error: the Hydra configs were not found at {CONFIGS_DIR}; reinstall align (a clone: "
                 f"pip install -e .; see README.md).")
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(help_text(CONFIGS_DIR, RECIPES_DIR, Path(__file__).resolve().parent.parent / "docs"))
        return
    try:
        sys.argv = [sys.argv[0], *resolve_recipe_args(sys.argv[1:])]
        flags = {arg for arg in sys.argv[1:] if arg.startswith("-")}
        if flags <= {"-m", "--multirun"}:  # other flags (--cfg, --info, ...) do not run: Hydra handles them
            from align.cluster import adopt_slurm_environment

            adopt_slurm_environment()  # under srun: WORLD_SIZE for the batch arithmetic
            check_config([arg for arg in sys.argv[1:] if arg not in flags], multirun=bool(flags))
        _hydra_main()
        shutdown_distributed()
    except (RecipeError, ConfigError) as err:
        print_error(err)
        sys.exit(2)
    except KeyboardInterrupt:  # a second Ctrl-C (the first one stops at a point that keeps work), or one before run
        print(f"[align] stopped at once by Ctrl-C during {_current_phase()}; kept: the complete checkpoints only "
              f"(resume=auto sets aside a save cut short); run again with resume=auto to continue", flush=True)
        sys.exit(130)


def _current_phase() -> str:
    # Not imported for it: before a run starts, align.preemption (torch) may not be loaded yet.
    preemption = sys.modules.get("align.preemption")
    return preemption.STOP.phase if preemption else "start-up"


if __name__ == "__main__":
    main()
