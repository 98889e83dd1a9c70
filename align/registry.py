"""The name-keyed table of training methods: what `algorithm=<name>` runs.

A method is one package under `align/methods/` (or a module of your own) that registers one entry per algorithm name:

    register_method(Method(name="sage", config=SAGEAlgorithmConfig, trl_config=GRPO_CONFIG, check=check_sage,
                           steps="align.methods.sage.steps"))

- `config`: its config dataclass, with its own `limits` (see `align.config.setting_limit`); stored in Hydra's
  ConfigStore as `algorithm/<name>_schema` (a `configs/algorithm/<name>.yaml` may build on it) and as `algorithm/<name>`
  itself when no such file exists, so a method of one's own needs no YAML.
- `check(config, processes)`: the checks across settings only this method knows, raising `ConfigError`; run by
  `align.config.validate` after the shared ones, before anything loads.
- `trl_config`: the TRL config class (and its file in `trl/trainer/`) whose fields `trainer.trl` / `algorithm.trl`
  may set.
- `steps`: the import path of a module with two functions, loaded only when a run starts (they import TRL):
    `prepare(config, tokenizer) -> Prepared`: everything that can fail before the run directory is opened (data,
        reward sources), and a note for the run's first line;
    `build(config, tokenizer, prepared, run: RunContext) -> Built`: models, any extra run steps (precomputing
        reference log-probs), and the trainer, a TRL trainer with `align.checkpoints.CompleteCheckpoints` (which
        saves and restores the method's own state with each checkpoint).
  `align.train` does the rest: validation, the run directory, resume, the SFT warm start, preemption, training, the
  final export and the report.

This module sits at the bottom of the layers (it imports nothing of align): `align.config` reads it to validate,
`align.methods` fills it, `align.train` runs what it holds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

GRPO_CONFIG = ("GRPOConfig", "grpo_config.py")
DPO_CONFIG = ("DPOConfig", "dpo_config.py")
REWARD_CONFIG = ("RewardConfig", "reward_config.py")
SFT_CONFIG = ("SFTConfig", "sft_config.py")


def no_checks(config: Any, processes: int) -> None:
    """A method whose settings are all checked by their `limits`."""


@dataclass(frozen=True)
class Method:
    """One registered training method (see the module docstring)."""

    name: str
    config: type
    trl_config: tuple[str, str]
    steps: str
    check: Callable[[Any, int], None] = no_checks
    # Progress-bar columns (align.console.Column) and the held-out metrics printed before -> after at the end.
    progress: tuple = ()
    metrics: tuple[str, ...] = ()
    warm_start: bool = False  # whether a policy SFT warm start (warm_start.max_steps) can precede it

    def load_steps(self) -> ModuleType:
        """The module with `prepare` and `build`. Imported here, at run time, not with the registry: config checks
        read every method's entry and must not pay for importing TRL and torch."""
        return importlib.import_module(self.steps)


@dataclass
class Prepared:
    """What a method's `prepare` loaded before the run directory opened. `train_dataset`: rows with a prompt (the
    warm start trains on it too); `held_out`: rows for held-out accuracy or None; `detail`: appended to the run's
    first line; `extra`: anything else the method's `build` needs."""

    train_dataset: Any = None
    held_out: Any = None
    detail: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class RunContext:
    """The open run a method's `build` works in: its directory and name, the trackers to report to, the process
    state (accelerate's PartialState), the model to start from (`model.path`, or the warm-started model) and the
    checkpoint being resumed (None for a fresh start)."""

    dir: Path
    name: str
    report_to: list[str]
    state: Any
    model_path: str
    checkpoint: str | None = None


@dataclass
class Built:
    """A method's trainer, ready to train, and the held-out accuracy callback (align.evaluation.HeldOutAccuracy)
    when the method reports held-out accuracy during training (else its `metrics` come from `trainer.evaluate`)."""

    trainer: Any
    held_out_accuracy: Any = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add `method` under its name; a second registration of a name is a bug (two packages claiming it)."""
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"algorithm '{method.name}' is registered twice ({METHODS[method.name].steps} and "
                         f"{method.steps}).")
    METHODS[method.name] = method
    return method


def method_named(name: str) -> Method:
    """The registered method `name`; KeyError if there is none (`align.config.validate` reports that first)."""
    return METHODS[name]
