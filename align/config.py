"""Typed run configuration: the settings every run shares, and validation with readable errors.

Hydra composes `configs/` + a recipe + command-line overrides into an `AlignConfig`. Every group node is typed, so an
unknown key fails at composition time with Hydra's "Key 'x' not in 'GRPOAlgorithmConfig'" message. The `algorithm`
node is the config dataclass of a registered method (`align.registry`), declared next to its method in
`align/methods/<name>/config.py` with its own checks. Each dataclass states the allowed values of its settings in a
`limits` class attribute; `validate` checks them all, then the constraints across settings, then the method's own
checks, before any dataset or model is loaded.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import MISSING

from align.registry import METHODS

CONFIGS_DIR = Path(__file__).parent / "_configs"  # configs/, shipped inside the package

LOGGER_BACKENDS = ("none", "wandb", "tensorboard")
RESUME_MODES = ("never", "auto")
# Named here, not imported, so validation needs no heavy import (tests keep each equal to the mapping it names):
SYNTHETIC_TASKS = ("arithmetic", "arithmetic_chat")  # align.data.synthetic.TASKS (importing align.data: datasets)
BUILTIN_REWARD_NAMES = ("exact_match", "numeric_match", "boxed_match", "format_boxed",  # align.rewards.BUILTIN_REWARDS
                        "reward_model")  # (importing align.rewards: torch, math_verify)


class ConfigError(ValueError):
    """The composed configuration is invalid; the message names the key and the fix."""


DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def _parsed_source(package: str, relative: str) -> ast.Module | None:
    """The module `relative` (a path inside the installed `package`), parsed and not imported, or None if it is not
    there: importing transformers' or TRL's modules imports torch and peft, seconds a config check must not spend.
    Not cached (a syntax tree of modeling_utils.py is tens of MB); its callers cache the names they read."""
    spec = importlib.util.find_spec(package)
    source = Path(spec.origin).parent / relative if spec and spec.origin else None
    return ast.parse(source.read_text()) if source and source.is_file() else None


def source_class(package: str, relative: str, name: str) -> ast.ClassDef | None:
    """The top-level class `name` of `package`/`relative` as source (`_parsed_source`), or None if it is not there."""
    module = _parsed_source(package, relative)
    return next((node for node in module.body if isinstance(node, ast.ClassDef) and node.name == name), None) \
        if module else None


@functools.lru_cache(maxsize=1)
def scheduler_types() -> tuple[str, ...]:
    """The values of transformers' `SchedulerType` (trainer.lr_scheduler_type), read from its source file."""
    enum = source_class("transformers", "trainer_utils.py", "SchedulerType")
    return tuple(item.value.value for item in enum.body
                 if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant))


@dataclass
class LoraConfig:
    r: int = 0  # 0 trains every weight; > 0 trains a LoRA adapter of this rank
    alpha: int = 16
    dropout: float = 0.0
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    limits: ClassVar[dict] = {"r": ">= 0; 0 trains every weight", "alpha": "> 0", "dropout": "[0, 1)"}


@dataclass
class ModelConfig:
    path: str = "embedded:tiny"  # local dir, hub name, embedded:tiny or embedded:tiny-pref:<tilt>
    revision: Optional[str] = None
    dtype: str = "auto"  # auto = bf16 on a bf16-capable GPU, else fp32
    trust_remote_code: bool = False
    chat_template: Optional[str] = None  # Jinja template overriding the tokenizer's own
    attn_implementation: Optional[str] = None
    load_in_4bit: bool = False  # QLoRA: 4-bit NF4 base weights under a LoRA adapter (a CUDA GPU + bitsandbytes)
    lora: LoraConfig = field(default_factory=LoraConfig)

    limits: ClassVar[dict] = {"dtype": DTYPES}


@dataclass
class SyntheticConfig:
    task: str = "arithmetic"
    num_train: int = 2000
    num_eval: int = 200
    digits: int = 2
    operators: List[str] = field(default_factory=lambda: ["+"])
    seed: int = 0
    sloppy_fraction: float = 0.0  # share of training solutions that forget carries/borrows (answers stay true)
    min_carries: int = 0  # keep only problems whose solution carries (or borrows) at least this often: a hard split

    limits: ClassVar[dict] = {"task": SYNTHETIC_TASKS, "num_train": ">= 1", "num_eval": ">= 0", "digits": ">= 1",
                              "seed": ">= 0", "sloppy_fraction": "[0, 1]", "min_carries": ">= 0"}


@dataclass
class ColumnsConfig:
    """Which source column holds each canonical column (unset = the source already uses the canonical name)."""

    prompt: Optional[str] = None
    answer: Optional[str] = None
    solution: Optional[str] = None


@dataclass
class DataConfig:
    # "synthetic", a local .jsonl/.json/.parquet/.csv file or save_to_disk directory, or a hub dataset name
    source: str = "synthetic"
    subset: Optional[str] = None  # hub dataset config name
    split: str = "train"
    eval_split: Optional[str] = None  # held-out split of the same source
    eval_size: int = 0  # when there is no eval split: rows carved off the end of the training split
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    system_prompt: Optional[str] = None  # prepended to string prompts
    answer_regex: Optional[str] = None  # extracts the verifier target from `answer`, e.g. "####\\s*(.+)$" for GSM8K
    max_train_rows: Optional[int] = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    limits: ClassVar[dict] = {"eval_size": ">= 0", "max_train_rows": ">= 1; null keeps every row"}


@dataclass
class RewardSourceConfig:
    name: str = MISSING  # a built-in verifier name or an import path `package.module:function`
    weight: float = 1.0
    kwargs: Dict[str, Any] = field(default_factory=dict)

    limits: ClassVar[dict] = {"weight": "finite"}


@dataclass
class RewardConfig:
    sources: List[RewardSourceConfig] = field(default_factory=list)


@dataclass
class PairsConfig:
    """An offline preference-pairs dataset: prompt, chosen and rejected response per row."""

    source: str = "synthetic"  # "synthetic" (embedded arithmetic pairs), a local file / save_to_disk dir, or a hub name
    subset: Optional[str] = None
    split: str = "train"
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    # Datasets that store two responses and the index of the preferred one (PKU-SafeRLHF: response_0, response_1,
    # safer_response_id) instead of chosen / rejected columns:
    response_columns: Optional[List[str]] = None
    preferred_index_column: Optional[str] = None
    system_prompt: Optional[str] = None  # prepended to string prompts
    max_rows: Optional[int] = None
    num_synthetic: int = 2000  # synthetic source: rows (a correct worked solution vs a careless one)
    max_length: int = 512  # prompt + response tokens; longer pairs are truncated from the response's end

    limits: ClassVar[dict] = {"max_rows": ">= 1", "num_synthetic": ">= 1", "max_length": ">= 1"}


FEEDBACK_SELECTIONS = ("text", "label")  # who gets feedback in align.data.preferences.synthetic_feedback


@dataclass
class SyntheticPreferenceConfig:
    """The embedded known-truth preference world (align.data.preferences): each response's true reward is
    N(mu, sigma^2) with mu and sigma functions of its words."""

    num_train: int = 2000
    num_eval: int = 400
    seed: int = 0
    annotators: int = 5  # pairs: simulated annotators voting per pair (soft label = their vote share)
    rho_01: float = 0.2  # feedback rows: P(observed label 0 | true label 1)
    rho_10: float = 0.1  # feedback rows: P(observed label 1 | true label 0)
    propensity: List[float] = field(default_factory=lambda: [0.15, 0.6])  # P(feedback | true label 0), (| 1)
    # feedback rows: "text" = P(feedback) is propensity averaged over the label given the response text (missing at
    # random given the text, as CausalRM assumes); "label" = propensity[true label] (a negative control)
    selection: str = "text"

    limits: ClassVar[dict] = {"num_train": ">= 1", "num_eval": ">= 0", "seed": ">= 0", "annotators": ">= 1",
                              "rho_01": "[0, 1]", "rho_10": "[0, 1]", "propensity": "(0, 1]",
                              "selection": FEEDBACK_SELECTIONS}


@dataclass
class RewardDataConfig:
    """Reward-model data (docs/reward_models.md): preference pairs (bradley_terry, gaussian_anchor) or one row per
    shown response with observational feedback (causal_rm)."""

    source: str = "synthetic"  # "synthetic", a local .jsonl/.json/.parquet/.csv file or directory, or a hub name
    subset: Optional[str] = None
    split: str = "train"
    eval_split: Optional[str] = None  # held-out split; else the last eval_size rows of train
    eval_size: int = 0
    max_rows: Optional[int] = None  # keep the first rows of train
    system_prompt: Optional[str] = None  # prepended to string prompts
    max_length: int = 512  # prompt + response tokens; longer rows are dropped (counted in the log)
    prompt_column: str = "prompt"
    # Pairs: chosen / rejected columns, or two response columns + the index of the preferred one.
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    response_columns: Optional[List[str]] = None
    preferred_index_column: Optional[str] = None
    label_column: Optional[str] = None  # soft label: share of votes for `chosen`, in [0, 1]
    votes_columns: Optional[List[str]] = None  # [votes for chosen, votes for rejected] or + [ties] (ties count half)
    score_columns: Optional[List[str]] = None  # external scores of [chosen, rejected]: anchors at percentiles
    anchor_columns: Optional[List[str]] = None  # ordinal labels 0..K of [chosen, rejected], given directly
    margin_column: Optional[str] = None  # bradley_terry: per-pair margin m in -log sigmoid(r_w - r_l - m)
    # Observational feedback (causal_rm): one row per shown response.
    response_column: str = "response"
    observed_column: str = "observed"  # 1 = the user gave feedback, 0 = no feedback
    feedback_column: str = "label"  # the (noisy) feedback label 0 / 1 where observed; anything where not
    propensity_column: Optional[str] = None  # known P(feedback | row) of the logging system, instead of fitting one
    true_label_column: Optional[str] = None  # held-out only: clean labels for accuracy / AUC
    synthetic: SyntheticPreferenceConfig = field(default_factory=SyntheticPreferenceConfig)

    limits: ClassVar[dict] = {"eval_size": ">= 0", "max_rows": ">= 1", "max_length": ">= 1"}


@dataclass
class WarmStartConfig:
    """An SFT stage run before the main algorithm in the same run directory (max_steps 0 turns it off)."""

    max_steps: int = 0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    completion_column: str = "solution"
    # SAGE: also teach the policy to write hints (from this column of gold hint JSON) and to solve with a hint
    hints_column: Optional[str] = None

    limits: ClassVar[dict] = {"max_steps": ">= 0; 0 turns the warm start off", "learning_rate": "> 0",
                              "per_device_train_batch_size": ">= 1"}


@dataclass
class TrainerConfig:
    output_root: str = "runs"
    run_name: Optional[str] = None  # default: <recipe or algorithm>-<timestamp>
    output_dir: Optional[str] = None  # overrides output_root/run_name
    seed: int = 42
    max_steps: int = 100
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 0  # 0 saves only the final model
    save_total_limit: Optional[int] = 2
    trl: Dict[str, Any] = field(default_factory=dict)  # further TrainingArguments fields, passed through as given

    limits: ClassVar[dict] = {"seed": ">= 0", "max_steps": ">= 1", "learning_rate": "> 0",
                              "lr_scheduler_type": scheduler_types, "warmup_steps": ">= 0", "weight_decay": ">= 0",
                              "max_grad_norm": ">= 0; 0 turns clipping off",
                              "per_device_train_batch_size": ">= 1", "gradient_accumulation_steps": ">= 1",
                              "logging_steps": ">= 1", "save_steps": ">= 0; 0 saves only the final model",
                              "save_total_limit": ">= 1; null keeps every checkpoint"}


@dataclass
class EvalConfig:
    """Held-out accuracy, greedy and without hints, before and after training (and every `every_steps`)."""

    enabled: bool = True
    metric: str = "boxed_match"  # a reward source; a sample counts as correct when it scores >= 1
    max_samples: int = 200
    max_new_tokens: int = 64
    batch_size: int = 64
    every_steps: int = 0  # 0 = only before and after
    # At the end, test the final model against the starting one item by item (python -m align.gate on
    # eval/step-0.jsonl vs the last eval/step-<N>.jsonl) and write <run_dir>/gate.json and gate.md.
    gate: bool = True
    gate_alpha: float = 0.05
    # At the end, also audit what training changed in the activations (python -m align.audit, the final model against
    # the starting one) into <run_dir>/audit/, on these prompt sets: files or shipped sets (see docs/audit.md).
    audit: bool = False
    audit_target: str = "embedded:arithmetic"
    audit_control: str = "embedded:neutral"

    limits: ClassVar[dict] = {"max_samples": ">= 1; eval.enabled=false turns held-out evaluation off",
                              "max_new_tokens": ">= 1", "batch_size": ">= 1",
                              "every_steps": ">= 0; 0 evaluates only before and after training",
                              "gate_alpha": "(0, 1); it is the gate's false-positive rate, 0.05 is usual"}


@dataclass
class LoggerConfig:
    backend: str = "none"  # none | wandb | tensorboard
    project: str = "align"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: Optional[str] = None  # wandb mode: online | offline | disabled (default: WANDB_MODE or online)
    log_completions: bool = False

    limits: ClassVar[dict] = {"backend": LOGGER_BACKENDS, "mode": ("online", "offline", "disabled")}


@dataclass
class AlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: Any = MISSING
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # never: a new run directory every time. auto: continue from the newest complete checkpoint in the run directory
    # (trainer.run_name / trainer.output_dir), or start there if it has none; what a requeued Slurm job runs.
    resume: str = "never"

    limits: ClassVar[dict] = {"resume": RESUME_MODES}


# --------------------------------------------------------------------------------------------------------------------
# Validation


def world_size() -> int:
    """Processes in this launch, read from the launcher's environment (no process group is needed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _cuda_available() -> bool:
    import torch  # here, not at the top: seconds to import, and only bf16 / 4-bit settings need it

    return torch.cuda.is_available()


def quantization_problem() -> str | None:
    """Why 4-bit loading cannot work in this environment, or None when it can."""
    if not _cuda_available():
        return "4-bit loading (bitsandbytes) needs a CUDA GPU, and none is available."
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed; pip install bitsandbytes."
    return None


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} is '{value}'; choose one of: {', '.join(map(str, allowed))}.")


@functools.lru_cache(maxsize=None)
def trl_config_fields(name: str, file: str) -> frozenset[str]:
    """The field names of TRL's config class `name` (defined in trl/trainer/`file`), read from the source files of
    it and its bases (TRL's _BaseConfig, transformers' TrainingArguments). Should that chain of classes ever change,
    the class is imported instead (seconds), so a real field is never refused."""
    chain = [source_class("trl", f"trainer/{file}", name), source_class("trl", "trainer/base_config.py", "_BaseConfig"),
             source_class("transformers", "training_args.py", "TrainingArguments")]
    if None in chain or any([getattr(b, "id", None) for b in cls.bases] != [base.name]
                            for cls, base in zip(chain, chain[1:])) or chain[-1].bases:
        import trl  # only in this fallback: seconds to import, and validation must not wait for it

        return frozenset(f.name for f in dataclasses.fields(getattr(trl, name)))
    return frozenset(item.target.id for cls in chain for item in cls.body
                     if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))



# The allowed values of every numeric or choice setting, by the dataclass that declares it (subclasses inherit):
# "> 0", ">= 1", an interval "(0, 1]", "finite", optionally followed by "; why"; a tuple (or a function returning
# one) of choices. `validate` checks them all before anything loads, None meaning "unset" where a field is Optional,
# and every float must be finite. Checks across settings stay in the `_validate_*` functions.
_BOUND = re.compile(r"(>=|>) (\S+)")
_INTERVAL = re.compile(r"([\[(])(\S+), (\S+)([\])])")


def within(value: float, spec: str) -> bool:
    """Whether `value` is finite and satisfies a LIMITS spec: '>= 1', '> 0', an interval such as '(0, 1]', or
    'finite' (nothing more)."""
    if not math.isfinite(value) or spec == "finite":
        return math.isfinite(value)
    if bound := _BOUND.fullmatch(spec):
        return value >= float(bound[2]) if bound[1] == ">=" else value > float(bound[2])
    low, high = _INTERVAL.fullmatch(spec).group(2, 3)
    return ((float(low) <= value if spec[0] == "[" else float(low) < value)
            and (value <= float(high) if spec[-1] == "]" else value < float(high)))


def _config_nodes(node: Any, key: str = ""):
    """(dotted key, dataclass instance) of `node` and every config dataclass below it (list items included)."""
    if dataclasses.is_dataclass(node):
        yield key, node
        for f in dataclasses.fields(node):
            yield from _config_nodes(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _config_nodes(item, f"{key}[{i}]")


def setting_limit(owner: type, name: str) -> Any:
    """The allowed values of field `name` of the config dataclass `owner`, from the `limits` of the class that
    declares it or of a base class, else None."""
    return next((vars(c)["limits"][name] for c in owner.__mro__ if name in vars(c).get("limits", {})), None)


def _check_known_keys(key: str, node: Any) -> None:
    """A `+key=value` override adds keys even to typed nodes (Hydra opens the node for it); refuse them here."""
    known = [f.name for f in dataclasses.fields(node)]
    for name in sorted(set(vars(node)) - set(known)):
        raise ConfigError(unknown_key_message(f"{key}.{name}" if key else name, type(node)))


def unknown_key_message(key: str, node_type: type) -> str:
    """Why the dotted `key` is refused, where `node_type` is the config dataclass that lacks its last part, with the
    closest setting it has. Only open dicts such as trainer.trl take new keys (`+key=value`)."""
    parent, _, name = key.rpartition(".")
    known = [f.name for f in dataclasses.fields(node_type)]
    close = [f"{parent}.{c}" if parent else c for c in difflib.get_close_matches(name, known, n=1)]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"{key} is not a setting of align (only open dicts such as trainer.trl take new keys).{hint}"


_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def reward_source_problem(name: str) -> str | None:
    """Why `name` names no reward source, or None: it must be a built-in (BUILTIN_REWARD_NAMES) or an import path
    `package.module:function` (or `package.module.function`). Only the path's form is checked here; importing the
    user's module is left to `align.rewards.resolve_reward`, when the run builds its rewards."""
    if name in BUILTIN_REWARD_NAMES:
        return None
    module, colon, attribute = name.partition(":")
    if colon and _DOTTED_NAME.fullmatch(module) and _DOTTED_NAME.fullmatch(attribute):
        return None
    if not colon and "." in name and _DOTTED_NAME.fullmatch(name):
        return None
    if colon or "." in name:
        return (f"Reward source '{name}' is not an import path; write 'package.module:function' (Python names "
                f"separated by dots, one colon before the function).")
    close = difflib.get_close_matches(name, BUILTIN_REWARD_NAMES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"Unknown reward source '{name}'.{hint} Built-in sources: {', '.join(BUILTIN_REWARD_NAMES)}; for your "
            f"own function give an import path 'package.module:function'.")


def model_path_problem(path: str) -> str | None:
    """Why `path` (model.path, a reference model's path) names no model, as far as the file system tells, or None:
    a local directory must be a checkpoint (config.json, or a PEFT adapter's adapter_config.json), and a path that
    looks local must exist. Hub names (`name`, `org/name`) and `embedded:*` names are left to the loader."""
    if path.startswith("embedded:"):
        return None
    local = Path(path).expanduser()
    if local.is_dir() and not any((local / name).is_file() for name in ("config.json", "adapter_config.json")):
        # transformers would go on to guess a tokenizer class and suggest installing sentencepiece
        held = sorted(p.name for p in local.iterdir())
        return (f"Model path '{path}' is a directory without config.json, so not a model checkpoint (it holds: "
                f"{', '.join(held[:5]) + (', ...' if len(held) > 5 else '') or 'nothing'}). Give a directory written "
                f"by save_pretrained (e.g. a run's final/), a hub name, or 'embedded:tiny'.")
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        return (f"Model path '{path}' does not exist. Give an existing local directory, a hub name such as "
                f"'Qwen/Qwen2.5-0.5B-Instruct', or 'embedded:tiny' for the embedded tiny model.")
    return None


_HUB_KERNEL = re.compile(r"[^/:]+/[^/:]+(?:@[^/:]+)?(?::[^/:]+)?")  # transformers' hub_kernels.is_kernel


@functools.lru_cache(maxsize=1)
def attention_implementations() -> tuple[str, ...] | None:
    """The model.attn_implementation names transformers accepts for every model: eager and the keys of its
    AttentionInterface (sdpa, flash_attention_2 / 3, flex_attention, ...), read from modeling_utils.py
    (`source_class`); None if its layout changed."""
    interface = source_class("transformers", "modeling_utils.py", "AttentionInterface")
    mapping = next((item.value for item in interface.body if isinstance(item, ast.Assign)
                    and getattr(item.targets[0], "id", None) == "_global_mapping"), None) if interface else None
    if not isinstance(mapping, ast.Dict):
        return None
    return ("eager", *(key.value for key in mapping.keys if isinstance(key, ast.Constant)))


def attention_problem(name: str, trust_remote_code: bool) -> str | None:
    """Why transformers would refuse model.attn_implementation `name` when the model loads, or None: it must be
    one of `attention_implementations` (also with the deprecated 'paged|' prefix) or a hub kernel `org/name`.
    Unchecked with trust_remote_code (the model's own code may register more) or if the names cannot be read."""
    names = attention_implementations()
    if trust_remote_code or names is None or _HUB_KERNEL.fullmatch(name) or name.removeprefix("paged|") in names:
        return None
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"model.attn_implementation is '{name}'; choose one of: {', '.join(names)}, or a kernel from the hub "
            f"('org/name', e.g. kernels-community/flash-attn2).{hint}")


def _validate_names(cfg: AlignConfig) -> None:
    """Reward sources, the held-out metric, model paths and the attention implementation, each checked for what
    can be known without importing anything heavy or loading anything."""
    rewards = [(f"reward.sources[{i}].name", source.name) for i, source in enumerate(cfg.reward.sources)]
    rewards += [("eval.metric", cfg.eval.metric)] if cfg.eval.enabled else []
    models = [("model.path", cfg.model.path)]
    for key, problem in [(key, reward_source_problem(name)) for key, name in rewards] + \
                        [(key, model_path_problem(path)) for key, path in models]:
        if problem:
            raise ConfigError(f"{key}: {problem}")
    if cfg.model.attn_implementation:
        problem = attention_problem(cfg.model.attn_implementation, cfg.model.trust_remote_code)
        if problem:
            raise ConfigError(problem)


def _check_limits(key: str, node: Any) -> None:
    """Every field of the dataclass `node` (at dotted `key`) against LIMITS; floats must be finite."""
    for f in dataclasses.fields(node):
        value, where = getattr(node, f.name), f"{key}.{f.name}" if key else f.name
        if value is None:  # an Optional setting left unset
            continue
        limit = setting_limit(type(node), f.name)
        if callable(limit):
            limit = limit()
        if isinstance(limit, tuple):
            _one_of(where, value, limit)
            continue
        values = value if isinstance(value, list) else [value]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        spec, _, why = (limit or "finite").partition("; ")
        for number in numbers:
            if not within(number, spec):
                allowed = f"in {spec}" if spec[0] in "[(" else spec
                note = f" ({why})" if why else ""
                raise ConfigError(f"{where} must be {allowed}{note}, got {list(value) if values is value else value}.")


def hydra_multirun():
    """Hydra's runtime config when this process runs a point of a multirun sweep, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def validate(cfg: AlignConfig, processes: int | None = None, in_sweep: bool | None = None) -> None:
    """Check every setting (no unknown keys, each within its limits), the constraints across settings, then the
    method's own checks (its registry entry); raise ConfigError naming the key and the fix. Loads nothing and imports
    nothing heavy unless a setting needs it (a bf16 / fp16 dtype or 4-bit loading ask torch whether there is a GPU);
    names in other packages (TRL config fields, schedulers, attention implementations) are read from their source
    files. `processes`: the launch's process count (default: WORLD_SIZE); `in_sweep`: whether this is a point of a
    multirun (default: ask Hydra)."""
    name = getattr(cfg.algorithm, "name", None)
    if not METHODS:  # a caller of its own that skipped align.methods, which registers them on import
        raise ConfigError("no training methods are registered; import align.methods before validating a config.")
    if name not in METHODS:
        raise ConfigError(f"algorithm.name '{name}' is unknown; choose one of: {', '.join(METHODS)}.")
    for key, node in _config_nodes(cfg):
        _check_known_keys(key, node)
        _check_limits(key, node)
    _validate_names(cfg)
    _validate_model(cfg.model)
    _validate_run(cfg, hydra_multirun() is not None if in_sweep is None else in_sweep)
    method = METHODS[name]
    if cfg.warm_start.max_steps and not method.warm_start:
        raise ConfigError(f"warm_start trains a policy by SFT before the main algorithm; algorithm={name} has no warm "
                          f"start. Set warm_start.max_steps=0 (and start from an SFT checkpoint if you need one).")
    method.check(cfg, processes or world_size())
    _validate_passthrough(cfg, method.trl_config)


def _validate_model(model: ModelConfig) -> None:
    """Precision the hardware has, and 4-bit loading only under a LoRA adapter, without DeepSpeed, on a GPU."""
    if model.dtype in ("bfloat16", "bf16", "float16", "fp16") and not _cuda_available():
        raise ConfigError(f"model.dtype is '{model.dtype}' but no GPU is available; CPU training runs in fp32. "
                          f"Set model.dtype=auto (or float32).")
    if model.load_in_4bit:
        if not model.lora.r:
            raise ConfigError("model.load_in_4bit quantizes the base weights, which then cannot be trained; train a "
                              "LoRA adapter on top (QLoRA): set model.lora.r > 0, e.g. model.lora.r=32.")
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            raise ConfigError("model.load_in_4bit places the quantized weights on each process's GPU, which DeepSpeed "
                              "cannot shard; launch QLoRA without DeepSpeed (one process, or DDP).")
        problem = quantization_problem()
        if problem:
            raise ConfigError(f"model.load_in_4bit: {problem} Set model.load_in_4bit=false to train in full precision.")


def _validate_run(cfg: AlignConfig, in_sweep: bool) -> None:
    """A named run for resume=auto, the evaluation schedule, the answer regex, and hint demonstrations only for a
    method that writes hints. (The audit's prompt sets are read by `align.audit.prompts.check_eval_prompt_sets`.)"""
    t = cfg.trainer
    if cfg.resume == "auto" and not (t.run_name or t.output_dir or in_sweep):
        raise ConfigError("resume=auto continues the run in a fixed directory, but the default run name has a "
                          "timestamp; name the run: trainer.run_name=NAME (or trainer.output_dir=DIR). (Points of a "
                          "sweep need no name: theirs is stable.)")
    if cfg.eval.every_steps % t.logging_steps:
        raise ConfigError(f"eval.every_steps {cfg.eval.every_steps} must be 0 or a multiple of trainer.logging_steps "
                          f"{t.logging_steps}, so held-out accuracy is logged on the step it was measured.")
    if cfg.data.answer_regex:
        try:
            re.compile(cfg.data.answer_regex)
        except re.error as err:
            raise ConfigError(f"data.answer_regex {cfg.data.answer_regex!r} is not a valid regular expression: "
                              f"{err}.") from None
    if cfg.warm_start.max_steps and cfg.warm_start.hints_column and not hasattr(cfg.algorithm, "hint"):
        raise ConfigError("warm_start.hints_column teaches SAGE's hint format; it needs algorithm=sage "
                          "(or unset it).")


def _validate_passthrough(cfg: AlignConfig, trl_config: tuple[str, str]) -> None:
    """`trainer.trl` / `algorithm.trl` must name real fields of the method's TRL config class, and none that align
    sets itself."""
    if not (cfg.trainer.trl or getattr(cfg.algorithm, "trl", None)):
        return
    trl_class, file = trl_config
    known = trl_config_fields(trl_class, file)
    for key, node in (("trainer.trl", cfg.trainer), ("algorithm.trl", cfg.algorithm)):
        owned = {f.name for f in dataclasses.fields(node)} - {"trl", "name"}
        for name in getattr(node, "trl", {}):
            if name in owned:
                raise ConfigError(f"{key}.{name} duplicates an align setting; set {key.split('.')[0]}.{name} instead.")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{key}.{name} is not a field of TRL's {trl_class}.{hint}")
