"""Typed run configuration: dataclasses registered in Hydra's ConfigStore, and validation with readable errors.

Hydra composes `configs/` + a recipe + command-line overrides into an `AlignConfig`. Every group node is typed, so an
unknown key fails at composition time with Hydra's "Key 'x' not in 'GRPOAlgorithmConfig'" message. Semantic checks
that need more than one key (batch arithmetic, precision on CPU, ...) live in `validate`, which runs before any
dataset or model is loaded.
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
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# TRL 1.16's loss types, used only if the installed TRL's own list cannot be read (`grpo_loss_types`).
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")  # "sequence" is GSPO
SCALE_REWARDS = ("group", "batch", "none")
LOGGER_BACKENDS = ("none", "wandb", "tensorboard")
RESUME_MODES = ("never", "auto")
SAGE_SCHEDULES = ("sage", "sage_light")
SAGE_TRIGGERS = ("no_success", "zero_variance")
SAGE_LIGHT_RULES = ("paper", "bidirectional")
FGRPO_DIVERGENCES = ("kl", "reverse_kl", "pearson", "hellinger", "js", "tv")
FGRPO_NORMALIZATIONS = ("batch", "group")
REWARD_MODEL_OBJECTIVES = ("bradley_terry", "gaussian_anchor", "causal_rm")
MULTIREF_LOSSES = ("mrpo", "mdpo")
MULTIREF_WEIGHTINGS = ("uniform", "arwc", "vdw", "vaw", "swcw", "swcw_onehot", "tsw")
MULTIREF_NEEDS_VALIDATION = ("vdw", "vaw", "tsw")
# Named here, not imported, so validation needs no heavy import (tests keep each equal to the mapping it names):
SYNTHETIC_TASKS = ("arithmetic", "arithmetic_chat")  # align.data.synthetic.TASKS (importing align.data: datasets)
BUILTIN_REWARD_NAMES = ("exact_match", "numeric_match", "boxed_match", "format_boxed",  # align.rewards.BUILTIN_REWARDS
                        "reward_model")  # (importing align.rewards: torch, math_verify)
# DPOConfig fields the multiref_dpo trainer sets itself or that its loss, data path and reference cache bypass.
MULTIREF_TRL_OWNED = {
    "max_length", "truncation_mode", "padding_free", "dataset_num_proc", "precompute_ref_log_probs",
    "precompute_ref_batch_size", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "loss_type",
    "loss_weights", "label_smoothing", "ld_alpha", "use_weighting", "f_divergence_type", "f_alpha_divergence_coef",
    "discopop_tau", "router_aux_loss_coef", "eval_strategy", "eval_steps", "eval_on_start",
}


class ConfigError(ValueError):
    """The composed configuration is invalid; the message names the key and the fix."""


@dataclass
class LoraConfig:
    r: int = 0  # 0 trains every weight; > 0 trains a LoRA adapter of this rank
    alpha: int = 16
    dropout: float = 0.0
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


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


@dataclass
class SyntheticConfig:
    task: str = "arithmetic"
    num_train: int = 2000
    num_eval: int = 200
    digits: int = 2
    operators: List[str] = field(default_factory=lambda: ["+"])
    seed: int = 0
    sloppy_fraction: float = 0.0  # share of training solutions that forget carries/borrows (answers stay true)


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


@dataclass
class RewardSourceConfig:
    name: str = MISSING  # a built-in verifier name or an import path `package.module:function`
    weight: float = 1.0
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    sources: List[RewardSourceConfig] = field(default_factory=list)


@dataclass
class GRPOAlgorithmConfig:
    name: str = "grpo"
    loss_type: str = "dapo"  # grpo | dapo | dr_grpo | bnpo
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    num_generations: int = 8
    beta: float = 0.0  # KL coefficient; > 0 loads a reference model
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None
    scale_rewards: str = "group"  # group | batch | none
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    steps_per_generation: Optional[int] = None  # default: gradient_accumulation_steps
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    trl: Dict[str, Any] = field(default_factory=dict)  # further GRPOConfig fields, passed through as given


HINT_SYSTEM_PROMPT = (
    "You are a teacher who writes hints. You see a problem and its reference solution and write three progressive "
    "hints that help a student solve the problem without giving the final answer away."
)
HINT_USER_TEMPLATE = (
    "Problem:\n{question}\n\nReference solution:\n{solution}\n\nReply with only a JSON object "
    '{"level_1": "...", "level_2": "...", "level_3": "..."}. level_1 names the key concept or approach; level_2 gives '
    "more direction on the method or the intermediate steps; level_3 gives detailed guidance that still leaves the "
    "student to finish. Each level builds on the previous one. Never state the final answer."
)


@dataclass
class HintConfig:
    """How SAGE asks the policy for hints and how a hint enters the solve prompt (see docs/sage.md)."""

    solution_column: str = "solution"  # privileged reference solution; rows without one are never hinted
    system_prompt: Optional[str] = HINT_SYSTEM_PROMPT
    user_template: str = HINT_USER_TEMPLATE  # fields: {question} {solution}
    solve_template: str = "{question}\n\nHere is a hint to help you:\n{hint}"  # fields: {question} {hint}
    temperature: float = 0.0  # 0 = greedy
    retry_temperature: float = 0.7  # retries of unparsable hints sample (a greedy retry would repeat itself)
    retries: int = 3
    max_tokens: int = 512
    leak_filter: bool = True  # drop hints that contain the verifier's answer string
    answer_column: str = "answer"  # what the leak filter looks for


@dataclass
class SAGEAlgorithmConfig(GRPOAlgorithmConfig):
    """GRPO whose collapsed groups are re-rolled with hints the policy writes itself (docs/sage.md)."""

    name: str = "sage"
    schedule: str = "sage"  # sage (probe + escalation every step) | sage_light (per-prompt level across epochs)
    trigger: str = "no_success"  # no_success | zero_variance: which groups count as collapsed (sage schedule)
    success_threshold: float = 0.0  # a completion succeeds when its reward is > this
    light_rule: str = "paper"  # paper (only raise) | bidirectional
    light_alpha: float = 0.35
    light_low: float = 0.1
    hint: HintConfig = field(default_factory=HintConfig)


@dataclass
class FGRPOAlgorithmConfig(GRPOAlgorithmConfig):
    """GRPO with the clipped surrogate replaced by a variational f-divergence loss (docs/fgrpo.md)."""

    name: str = "fgrpo"
    divergence: str = "pearson"  # kl | reverse_kl | pearson | hellinger | js | tv
    beta: float = 0.1  # r = beta * (log pi - log pi_ref); must be > 0 (the reference model is part of the loss)
    clamp: List[float] = field(default_factory=lambda: [-10.0, 10.0])  # range r is clamped to
    normalization: str = "batch"  # token mean over the generation batch (batch) or per group, then over groups


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


@dataclass
class FHALAlgorithmConfig(FGRPOAlgorithmConfig):
    """f-HAL: lam * f-GRPO on on-policy groups + (1 - lam) * the f-divergence pairs loss on offline pairs."""

    name: str = "fhal"
    divergence: str = "js"
    lam: float = 0.5  # weight of the on-policy f-GRPO term (the paper's lambda)
    pairs_per_step: int = 8  # offline pairs per process per optimizer step
    pairs: PairsConfig = field(default_factory=PairsConfig)


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


@dataclass
class AnchorConfig:
    """gaussian_anchor: ordinal anchors that fix the scale and offset of mu and sigma."""

    count: int = 2  # 0 (pairs only: sigma is not identified), 1 (binary probit) or 2
    percentiles: List[float] = field(default_factory=lambda: [25.0, 75.0])  # of the standardised training score
    lam: float = 0.1  # weight of the anchor term
    fraction: float = 1.0  # share of training pairs that carry anchors (a fixed subset)


@dataclass
class CausalRMConfig:
    """causal_rm: noise-aware loss and inverse propensity weighting (docs/reward_models.md)."""

    noise_correction: bool = True  # the noise-aware surrogate (False: plain BCE on the observed labels)
    rho_01: Optional[float] = None  # P(y~ = 0 | y = 1); both unset: estimated from a noisy-label model
    rho_10: Optional[float] = None  # P(y~ = 1 | y = 0)
    noise_quantile: float = 0.97  # estimation: rho_10 ~ sigmoid(q_(1-this)), rho_01 ~ 1 - sigmoid(q_this)
    propensity_weighting: bool = True  # IPS over all rows (False: train on the observed rows only)
    propensity_clip: List[float] = field(default_factory=lambda: [0.1, 1.0])
    doubly_robust: bool = False  # add an imputation model's loss on every row (needs propensity_weighting)
    aux_l2: float = 1e-2  # ridge penalty of the logistic propensity / noisy-label models on frozen features


@dataclass
class RewardModelAlgorithmConfig:
    """A reward model on TRL's RewardTrainer: Bradley-Terry, anchor-guided Gaussian, or CausalRM."""

    name: str = "reward_model"
    objective: str = "bradley_terry"  # bradley_terry | gaussian_anchor | causal_rm
    center_rewards_coefficient: Optional[float] = None  # bradley_terry: TRL's penalty on (r_w + r_l)^2
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    causal: CausalRMConfig = field(default_factory=CausalRMConfig)
    eval_steps: int = 0  # held-out metrics every this many steps (0: before and after training only)
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    trl: Dict[str, Any] = field(default_factory=dict)  # further RewardConfig fields, passed through as given


@dataclass
class ReferenceModelConfig:
    """One reference model of multi-reference DPO; it scores with its own tokenizer and chat template."""

    path: str = MISSING  # local dir, hub name, or embedded:*
    revision: Optional[str] = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template: Optional[str] = None  # Jinja template overriding the tokenizer's own
    name: Optional[str] = None  # label in metrics (weights/<name>); default: the last part of the path


@dataclass
class MultiRefDPOAlgorithmConfig:
    """DPO against K reference models at once: MRPO or MDPO with a reference-weighting strategy
    (docs/multiref_dpo.md). Reference log-probs are computed once per reference and cached on disk."""

    name: str = "multiref_dpo"
    # Each entry a model path / hub name, or a mapping with the fields of ReferenceModelConfig.
    references: List[Any] = field(default_factory=list)
    loss: str = "mdpo"  # mrpo (one virtual reference) | mdpo (a weighted sum of DPO losses)
    weighting: str = "vaw"  # uniform | arwc | vdw | vaw | swcw | swcw_onehot | tsw
    beta: float = 0.1
    length_normalize: bool = True  # sequence log-probs as per-token means (False: sums)
    # Pairs carved from the training data (never the eval data), whatever the weighting, so every strategy trains on
    # the same pairs; vdw / vaw / tsw read them.
    validation_size: int = 1000
    window: int = 1  # swcw: batches in the sliding window
    prior: float = 5.0  # tsw: Beta(prior, prior) per arm at the start
    bandit_pairs: int = 125  # tsw: validation pairs scored before and after each step (resampled every step)
    precompute_batch_size: int = 8  # sequences per reference forward while filling the cache
    cache_dir: Optional[str] = None  # default: $ALIGN_CACHE/reference_logps
    eval_steps: int = 0  # held-out preference accuracy every this many steps (0: before and after training only)
    data: RewardDataConfig = field(default_factory=RewardDataConfig)  # preference pairs; soft labels are ignored
    trl: Dict[str, Any] = field(default_factory=dict)  # further DPOConfig fields, passed through as given


@dataclass
class SFTAlgorithmConfig:
    name: str = "sft"
    completion_column: str = "solution"
    max_length: int = 512
    trl: Dict[str, Any] = field(default_factory=dict)  # further SFTConfig fields, passed through as given


@dataclass
class WarmStartConfig:
    """An SFT stage run before the main algorithm in the same run directory (max_steps 0 turns it off)."""

    max_steps: int = 0
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 32
    completion_column: str = "solution"
    # SAGE: also teach the policy to write hints (from this column of gold hint JSON) and to solve with a hint
    hints_column: Optional[str] = None


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


@dataclass
class LoggerConfig:
    backend: str = "none"  # none | wandb | tensorboard
    project: str = "align"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: Optional[str] = None  # wandb mode: online | offline | disabled (default: WANDB_MODE or online)
    log_completions: bool = False


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


ALGORITHMS = {"grpo": GRPOAlgorithmConfig, "sage": SAGEAlgorithmConfig, "fgrpo": FGRPOAlgorithmConfig,
              "fhal": FHALAlgorithmConfig, "sft": SFTAlgorithmConfig,
              "reward_model": RewardModelAlgorithmConfig, "multiref_dpo": MultiRefDPOAlgorithmConfig}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="align_schema", node=AlignConfig)
    for name, node in ALGORITHMS.items():
        cs.store(group="algorithm", name=f"{name}_schema", node=node)


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
    import importlib.util

    if not _cuda_available():
        return "4-bit loading (bitsandbytes) needs a CUDA GPU, and none is available."
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed; pip install bitsandbytes."
    return None


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} is '{value}'; choose one of: {', '.join(map(str, allowed))}.")


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


@functools.lru_cache(maxsize=1)
def grpo_loss_types() -> tuple[str, ...]:
    """The loss types the installed TRL's GRPOConfig accepts (algorithm.loss_type), from the "Supported values are
    ..." sentence of its `loss_type` field, read from the source file (`source_class`). TRL keeps no list of them in
    code; should the sentence ever change shape, the loss types TRL 1.16 documents are used."""
    grpo_config = source_class("trl", "trainer/grpo_config.py", "GRPOConfig")
    for node in ast.walk(grpo_config) if grpo_config else ():
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "loss_type":
            help_text = next((v.value for call in ast.walk(node) if isinstance(call, ast.Dict)
                              for k, v in zip(call.keys, call.values)
                              if getattr(k, "value", None) == "help" and isinstance(v, ast.Constant)), "")
            supported = re.search(r"Supported values are (.*?)\.(\s|$)", help_text)
            if supported and (names := re.findall(r"'(\w+)'", supported.group(1))):
                return tuple(names)
    return GRPO_LOSS_TYPES


# align's algorithms -> the TRL config class their trainer and/or algorithm.trl pass-through keys go to, and its file.
TRL_CONFIGS = {GRPOAlgorithmConfig: ("GRPOConfig", "grpo_config.py"), RewardModelAlgorithmConfig:
               ("RewardConfig", "reward_config.py"), MultiRefDPOAlgorithmConfig: ("DPOConfig", "dpo_config.py"),
               SFTAlgorithmConfig: ("SFTConfig", "sft_config.py")}


@functools.lru_cache(maxsize=None)
def trl_config_fields(name: str, file: str) -> frozenset[str]:
    """The field names of TRL's config class `name` (defined in trl/trainer/`file`), read from the source files of
    it and its bases (TRL's _BaseConfig, transformers' TrainingArguments). Should that chain of classes ever change,
    the class is imported instead (seconds), so a real field is never refused."""
    chain = [source_class("trl", f"trainer/{file}", name), source_class("trl", "trainer/base_config.py", "_BaseConfig"),
             source_class("transformers", "training_args.py", "TrainingArguments")]
    if None in chain or any([getattr(b, "id", None) for b in cls.bases] != [base.name]
                            for cls, base in zip(chain, chain[1:])) or chain[-1].bases:
        import trl

        return frozenset(f.name for f in dataclasses.fields(getattr(trl, name)))
    return frozenset(item.target.id for cls in chain for item in cls.body
                     if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))


DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

# The allowed values of every numeric or choice setting, by the dataclass that declares it (subclasses inherit):
# "> 0", ">= 1", an interval "(0, 1]", "finite", optionally followed by "; why"; a tuple (or a function returning
# one) of choices. `validate` checks them all before anything loads, None meaning "unset" where a field is Optional,
# and every float must be finite. Checks across settings stay in the `_validate_*` functions.
LIMITS: dict[type, dict[str, Any]] = {
    AlignConfig: {"resume": RESUME_MODES},
    ModelConfig: {"dtype": DTYPES},
    LoraConfig: {"r": ">= 0; 0 trains every weight", "alpha": "> 0", "dropout": "[0, 1)"},
    DataConfig: {"eval_size": ">= 0", "max_train_rows": ">= 1; null keeps every row"},
    SyntheticConfig: {"task": SYNTHETIC_TASKS, "num_train": ">= 1", "num_eval": ">= 0", "digits": ">= 1",
                      "seed": ">= 0", "sloppy_fraction": "[0, 1]"},
    RewardSourceConfig: {"weight": "finite"},
    TrainerConfig: {"seed": ">= 0", "max_steps": ">= 1", "learning_rate": "> 0", "lr_scheduler_type": scheduler_types,
                    "warmup_steps": ">= 0", "weight_decay": ">= 0", "max_grad_norm": ">= 0; 0 turns clipping off",
                    "per_device_train_batch_size": ">= 1", "gradient_accumulation_steps": ">= 1",
                    "logging_steps": ">= 1", "save_steps": ">= 0; 0 saves only the final model",
                    "save_total_limit": ">= 1; null keeps every checkpoint"},
    EvalConfig: {"max_samples": ">= 1; eval.enabled=false turns held-out evaluation off", "max_new_tokens": ">= 1",
                 "batch_size": ">= 1", "every_steps": ">= 0; 0 evaluates only before and after training",
                 "gate_alpha": "(0, 1); it is the gate's false-positive rate, 0.05 is usual"},
    WarmStartConfig: {"max_steps": ">= 0; 0 turns the warm start off", "learning_rate": "> 0",
                      "per_device_train_batch_size": ">= 1"},
    LoggerConfig: {"backend": LOGGER_BACKENDS, "mode": ("online", "offline", "disabled")},
    GRPOAlgorithmConfig: {
        "loss_type": grpo_loss_types, "importance_sampling_level": IMPORTANCE_SAMPLING_LEVELS,
        "num_generations": ">= 2; group-relative advantages need a group", "beta": ">= 0; 0 loads no reference",
        "epsilon": "> 0", "epsilon_high": "> 0", "scale_rewards": SCALE_REWARDS, "temperature": "> 0",
        "top_p": "(0, 1]", "max_completion_length": ">= 1", "steps_per_generation": ">= 1",
        "num_iterations": ">= 1", "vllm_mode": ("colocate", "server")},
    HintConfig: {"temperature": ">= 0; 0 = greedy", "retry_temperature": ">= 0", "retries": ">= 0",
                 "max_tokens": ">= 1"},
    SAGEAlgorithmConfig: {"schedule": SAGE_SCHEDULES, "trigger": SAGE_TRIGGERS, "success_threshold": "finite",
                          "light_rule": SAGE_LIGHT_RULES, "light_alpha": "[0, 1]", "light_low": "[0, 1]"},
    FGRPOAlgorithmConfig: {"divergence": FGRPO_DIVERGENCES, "clamp": "finite", "normalization": FGRPO_NORMALIZATIONS},
    FHALAlgorithmConfig: {"lam": "[0, 1]; 1 = pure f-GRPO, 0 = pure pairs loss", "pairs_per_step": ">= 1"},
    PairsConfig: {"max_rows": ">= 1", "num_synthetic": ">= 1", "max_length": ">= 1"},
    SyntheticPreferenceConfig: {"num_train": ">= 1", "num_eval": ">= 0", "seed": ">= 0", "annotators": ">= 1",
                                "rho_01": "[0, 1]", "rho_10": "[0, 1]", "propensity": "(0, 1]"},
    RewardDataConfig: {"eval_size": ">= 0", "max_rows": ">= 1", "max_length": ">= 1"},
    AnchorConfig: {"count": (0, 1, 2), "percentiles": "(0, 100)", "lam": ">= 0", "fraction": "(0, 1]"},
    CausalRMConfig: {"rho_01": "[0, 1)", "rho_10": "[0, 1)", "noise_quantile": "(0.5, 1)",
                     "propensity_clip": "(0, 1]", "aux_l2": ">= 0"},
    RewardModelAlgorithmConfig: {"objective": REWARD_MODEL_OBJECTIVES, "center_rewards_coefficient": ">= 0",
                                 "eval_steps": ">= 0; 0 evaluates only before and after training"},
    ReferenceModelConfig: {"dtype": DTYPES},
    MultiRefDPOAlgorithmConfig: {"loss": MULTIREF_LOSSES, "weighting": MULTIREF_WEIGHTINGS, "beta": "> 0",
                                 "validation_size": ">= 0", "window": ">= 1", "prior": "> 0", "bandit_pairs": ">= 1",
                                 "precompute_batch_size": ">= 1",
                                 "eval_steps": ">= 0; 0 evaluates only before and after training"},
    SFTAlgorithmConfig: {"max_length": ">= 1"},
}
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
    """The LIMITS entry of field `name` of the config dataclass `owner` (or of a base class), else None."""
    return next((LIMITS[c][name] for c in owner.__mro__ if name in LIMITS.get(c, {})), None)


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
    if isinstance(cfg.algorithm, MultiRefDPOAlgorithmConfig):
        models += [(f"algorithm.references[{i}]", r.path) for i, r in enumerate(reference_models(cfg.algorithm))]
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


def generation_batch_size(algo: GRPOAlgorithmConfig, trainer: TrainerConfig, processes: int) -> tuple[int, str]:
    """Completions per generation round across all processes, and the arithmetic that produced it."""
    steps = algo.steps_per_generation or trainer.gradient_accumulation_steps
    size = trainer.per_device_train_batch_size * processes * steps
    source = "steps_per_generation" if algo.steps_per_generation else "gradient_accumulation_steps"
    return size, (f"per_device_train_batch_size {trainer.per_device_train_batch_size} x processes {processes} x "
                  f"{source} {steps} = {size}")


def hydra_multirun():
    """Hydra's runtime config when this process runs a point of a multirun sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get()


def validate(cfg: AlignConfig, processes: int | None = None, in_sweep: bool | None = None) -> None:
    """Check every setting (no unknown keys, each within its LIMITS) and the constraints across settings; raise
    ConfigError naming the key and the fix. Loads nothing and imports nothing heavy unless a setting needs it (a
    bf16 / fp16 dtype or 4-bit loading ask torch whether there is a GPU); names in other packages (TRL config fields,
    schedulers, attention implementations) are read from their source files. `processes`: the launch's process
    count (default: WORLD_SIZE); `in_sweep`: whether this is a point of a multirun (default: ask Hydra)."""
    processes = processes or world_size()
    t, algo = cfg.trainer, cfg.algorithm
    if getattr(algo, "name", None) not in ALGORITHMS:
        raise ConfigError(f"algorithm.name '{getattr(algo, 'name', None)}' is unknown; choose one of: "
                          f"{', '.join(ALGORITHMS)}.")
    for key, node in _config_nodes(cfg):
        _check_known_keys(key, node)
        _check_limits(key, node)
    _validate_names(cfg)
    in_sweep = hydra_multirun() is not None if in_sweep is None else in_sweep
    if cfg.resume == "auto" and not (t.run_name or t.output_dir or in_sweep):
        raise ConfigError("resume=auto continues the run in a fixed directory, but the default run name has a "
                          "timestamp; name the run: trainer.run_name=NAME (or trainer.output_dir=DIR). (Points of a "
                          "sweep need no name: theirs is stable.)")
    if cfg.model.dtype in ("bfloat16", "bf16", "float16", "fp16") and not _cuda_available():
        raise ConfigError(f"model.dtype is '{cfg.model.dtype}' but no GPU is available; CPU training runs in fp32. "
                          f"Set model.dtype=auto (or float32).")
    if cfg.model.load_in_4bit:
        if not cfg.model.lora.r:
            raise ConfigError("model.load_in_4bit quantizes the base weights, which then cannot be trained; train a "
                              "LoRA adapter on top (QLoRA): set model.lora.r > 0, e.g. model.lora.r=32.")
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            raise ConfigError("model.load_in_4bit places the quantized weights on each process's GPU, which DeepSpeed "
                              "cannot shard; launch QLoRA without DeepSpeed (one process, or DDP).")
        problem = quantization_problem()
        if problem:
            raise ConfigError(f"model.load_in_4bit: {problem} Set model.load_in_4bit=false to train in full precision.")
    if cfg.eval.every_steps % t.logging_steps:
        raise ConfigError(f"eval.every_steps {cfg.eval.every_steps} must be 0 or a multiple of trainer.logging_steps "
                          f"{t.logging_steps}, so held-out accuracy is logged on the step it was measured.")
    if cfg.eval.audit:
        from align.audit.prompts import AuditInputError, load_prompts

        for key in ("audit_target", "audit_control"):
            try:
                load_prompts(getattr(cfg.eval, key))
            except AuditInputError as err:
                raise ConfigError(f"eval.{key}: {err}.") from None
    if cfg.data.answer_regex:
        try:
            re.compile(cfg.data.answer_regex)
        except re.error as err:
            raise ConfigError(f"data.answer_regex {cfg.data.answer_regex!r} is not a valid regular expression: "
                              f"{err}.") from None
    if cfg.warm_start.max_steps and cfg.warm_start.hints_column and not isinstance(algo, SAGEAlgorithmConfig):
        raise ConfigError("warm_start.hints_column teaches SAGE's hint format; it needs algorithm=sage "
                          "(or unset it).")
    if isinstance(algo, GRPOAlgorithmConfig):
        _validate_grpo(cfg, algo, processes)
    if isinstance(algo, RewardModelAlgorithmConfig):
        _validate_reward_model(cfg, algo)
    if isinstance(algo, MultiRefDPOAlgorithmConfig):
        _validate_multiref(cfg, algo)
    _validate_passthrough(cfg)


def _validate_passthrough(cfg: AlignConfig) -> None:
    """`trainer.trl` / `algorithm.trl` must name real fields of the TRL config, and none that align sets itself."""
    if not (cfg.trainer.trl or cfg.algorithm.trl):
        return
    trl_class, file = next(trl for algo, trl in TRL_CONFIGS.items() if isinstance(cfg.algorithm, algo))
    known = trl_config_fields(trl_class, file)
    for key, node in (("trainer.trl", cfg.trainer), ("algorithm.trl", cfg.algorithm)):
        owned = {f.name for f in dataclasses.fields(node)} - {"trl", "name"}
        for name in node.trl:
            if name in owned:
                raise ConfigError(f"{key}.{name} duplicates an align setting; set {key.split('.')[0]}.{name} instead.")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"{key}.{name} is not a field of TRL's {trl_class}.{hint}")


def generation_cycle_steps(algo: GRPOAlgorithmConfig, trainer: TrainerConfig) -> int:
    """Optimizer steps after which a GRPO generation is used up (TRL reuses one generated batch for
    steps_per_generation x num_iterations micro-batches): the steps where a checkpoint holds no buffered rollout."""
    accumulation = trainer.gradient_accumulation_steps
    micro_steps = (algo.steps_per_generation or accumulation) * algo.num_iterations
    return micro_steps // math.gcd(micro_steps, accumulation)


def _validate_grpo(cfg: AlignConfig, algo: GRPOAlgorithmConfig, processes: int) -> None:
    multiple = generation_cycle_steps(algo, cfg.trainer)
    if cfg.trainer.save_steps % multiple:
        raise ConfigError(
            f"trainer.save_steps {cfg.trainer.save_steps} must be a multiple of {multiple}: one generation is used "
            f"for {multiple} optimizer steps (algorithm.steps_per_generation x algorithm.num_iterations over "
            f"trainer.gradient_accumulation_steps), and a checkpoint inside that cycle could not be resumed exactly.")
    size, arithmetic = generation_batch_size(algo, cfg.trainer, processes)
    if size % algo.num_generations:
        raise ConfigError(
            f"generation batch {size} is not divisible by num_generations {algo.num_generations}: {arithmetic}. "
            f"Change one of these so the product is a multiple of {algo.num_generations}."
        )
    if not cfg.reward.sources:
        raise ConfigError("reward.sources is empty; GRPO needs at least one reward source (e.g. reward=math).")
    if isinstance(algo, SAGEAlgorithmConfig):
        _validate_sage(algo, cfg.trainer)
    if isinstance(algo, FGRPOAlgorithmConfig):
        _validate_fgrpo(algo, cfg.trainer)


def _validate_fgrpo(algo: FGRPOAlgorithmConfig, trainer: TrainerConfig) -> None:
    if algo.beta <= 0:
        raise ConfigError(f"algorithm.beta is {algo.beta}, but f-GRPO's loss is built on r = beta * (log pi - log "
                          f"pi_ref): it needs a reference model and beta > 0 (e.g. algorithm.beta=0.1).")
    if len(algo.clamp) != 2 or not algo.clamp[0] < 0 < algo.clamp[1]:
        raise ConfigError(f"algorithm.clamp must be [low, high] with low < 0 < high, got {list(algo.clamp)}.")
    if algo.loss_type != "dapo":
        raise ConfigError(f"algorithm.loss_type is '{algo.loss_type}', but f-GRPO has its own loss (a token mean "
                          f"over the batch's completion tokens); leave loss_type at dapo.")
    # The loss has no importance ratio to the sampling policy: anything that trains on stale or differently-sampled
    # completions, or reweights tokens through GRPO's surrogate, would be silently ignored.
    off_policy = [f"{key} {value}" for key, value, ok in (
        ("algorithm.num_iterations", algo.num_iterations, algo.num_iterations == 1),
        ("algorithm.steps_per_generation", algo.steps_per_generation,
         algo.steps_per_generation in (None, trainer.gradient_accumulation_steps)),
        ("algorithm.use_vllm", algo.use_vllm, not algo.use_vllm),
        ("algorithm.importance_sampling_level", algo.importance_sampling_level,
         algo.importance_sampling_level == "token"),
    ) if not ok]
    ignored = ("top_entropy_quantile", "entropy_coef", "off_policy_mask_threshold",
               "vllm_importance_sampling_correction")
    off_policy += [f"algorithm.trl.{key}" for key in ignored if key in algo.trl]
    if off_policy:
        raise ConfigError(f"f-GRPO's loss is on-policy and has no importance ratio or clipping, so these settings "
                          f"would be ignored: {', '.join(off_policy)}. Leave them at their defaults "
                          f"(steps_per_generation = gradient_accumulation_steps, num_iterations 1, no vLLM).")
    if isinstance(algo, FHALAlgorithmConfig):
        pairs = algo.pairs
        if (pairs.response_columns is None) != (pairs.preferred_index_column is None) or (
                pairs.response_columns is not None and len(pairs.response_columns) != 2):
            raise ConfigError("algorithm.pairs.response_columns (two columns) and algorithm.pairs."
                              "preferred_index_column go together: set both, or neither to use chosen/rejected.")
        if algo.pairs_per_step % trainer.gradient_accumulation_steps:
            raise ConfigError(f"algorithm.pairs_per_step {algo.pairs_per_step} is split over the "
                              f"{trainer.gradient_accumulation_steps} micro-batches of an optimizer step "
                              f"(trainer.gradient_accumulation_steps); make it a multiple of that.")


def _validate_sage(algo: SAGEAlgorithmConfig, trainer: TrainerConfig) -> None:
    if not algo.light_low <= algo.light_alpha:
        raise ConfigError(f"need 0 <= algorithm.light_low ({algo.light_low}) <= algorithm.light_alpha "
                          f"({algo.light_alpha}) <= 1.")
    h = algo.hint
    for key, fields in (("user_template", ("{question}", "{solution}")), ("solve_template", ("{question}", "{hint}"))):
        missing = [f for f in fields if f not in getattr(h, key)]
        if missing:
            raise ConfigError(f"algorithm.hint.{key} must contain {' and '.join(missing)}.")
    # Each rank hints and re-rolls its own groups, so a group must not straddle two ranks.
    steps = algo.steps_per_generation or trainer.gradient_accumulation_steps
    local = trainer.per_device_train_batch_size * steps
    if local % algo.num_generations:
        raise ConfigError(
            f"SAGE re-rolls whole groups on the rank that holds them, so each process's generation batch "
            f"(per_device_train_batch_size {trainer.per_device_train_batch_size} x steps {steps} = {local}) must be a "
            f"multiple of num_generations {algo.num_generations}."
        )


def _pair_of_columns(key: str, value, sizes: tuple[int, ...] = (2,)) -> None:
    if value is not None and len(value) not in sizes:
        raise ConfigError(f"{key} must list {' or '.join(map(str, sizes))} columns, got {list(value)}.")


def _validate_reward_model(cfg: AlignConfig, algo: RewardModelAlgorithmConfig) -> None:
    if cfg.warm_start.max_steps:
        raise ConfigError("warm_start trains a policy by SFT; a reward model has no warm start. Set "
                          "warm_start.max_steps=0.")
    data, anchors, causal = algo.data, algo.anchors, algo.causal
    if cfg.model.lora.r:
        raise ConfigError("model.lora.r > 0: LoRA reward models are not supported yet (the adapter-only export has no "
                          "config.json for the scorer and best-of-N to read). Set model.lora.r=0.")
    if algo.center_rewards_coefficient is not None and algo.objective != "bradley_terry":
        raise ConfigError(f"algorithm.center_rewards_coefficient is TRL's Bradley-Terry penalty; objective "
                          f"'{algo.objective}' does not use it. Unset it.")
    _pair_of_columns("algorithm.data.response_columns", data.response_columns)
    _pair_of_columns("algorithm.data.votes_columns", data.votes_columns, (2, 3))
    _pair_of_columns("algorithm.data.score_columns", data.score_columns)
    _pair_of_columns("algorithm.data.anchor_columns", data.anchor_columns)
    if data.margin_column and algo.objective != "bradley_terry":
        raise ConfigError(f"algorithm.data.margin_column is a margin in the Bradley-Terry loss; objective "
                          f"'{algo.objective}' does not use it. Unset it or use algorithm.objective=bradley_terry.")
    if data.label_column and data.votes_columns:
        raise ConfigError("Set algorithm.data.label_column (soft labels) or algorithm.data.votes_columns, not both.")
    if data.score_columns and data.anchor_columns:
        raise ConfigError("Set algorithm.data.score_columns (anchors from a score) or algorithm.data.anchor_columns "
                          "(given ordinal labels), not both.")
    if algo.objective == "gaussian_anchor":
        if anchors.count and len(anchors.percentiles) != anchors.count:
            raise ConfigError(f"algorithm.anchors.percentiles {list(anchors.percentiles)} must give one percentile per "
                              f"anchor ({anchors.count}), e.g. algorithm.anchors.percentiles=[50] for one anchor.")
        if anchors.count and not (data.source == "synthetic" or data.score_columns or data.anchor_columns):
            raise ConfigError(f"algorithm.anchors.count is {anchors.count} but the data names no anchor source: set "
                              f"algorithm.data.score_columns=[<chosen score>,<rejected score>] or "
                              f"algorithm.data.anchor_columns, or algorithm.anchors.count=0 (sigma is then not "
                              f"identified).")
    if algo.objective == "causal_rm":
        given = [r for r in (causal.rho_01, causal.rho_10) if r is not None]
        if len(given) == 1:
            raise ConfigError("Give both algorithm.causal.rho_01 and rho_10 (or neither, to estimate them).")
        if given and not causal.noise_correction:
            raise ConfigError("algorithm.causal.rho_01 / rho_10 are set but noise_correction is off; unset them or "
                              "turn noise_correction on.")
        if sum(given) >= 1:
            raise ConfigError(f"algorithm.causal.rho_01 + rho_10 must be < 1 (labels more informative than a coin "
                              f"flip); got rho_01={causal.rho_01}, rho_10={causal.rho_10}.")
        clip = list(causal.propensity_clip)
        if len(clip) != 2 or not clip[0] <= clip[1]:
            raise ConfigError(f"algorithm.causal.propensity_clip must be [low, high] with 0 < low <= high <= 1, got "
                              f"{clip}.")
        if causal.doubly_robust and not causal.propensity_weighting:
            raise ConfigError("algorithm.causal.doubly_robust corrects the imputation with inverse propensity "
                              "weights; it needs propensity_weighting=true.")


def reference_models(algo: MultiRefDPOAlgorithmConfig) -> list[ReferenceModelConfig]:
    """`algorithm.references` as ReferenceModelConfig objects with distinct names; raises ConfigError naming the
    bad entry."""
    known = {f.name for f in dataclasses.fields(ReferenceModelConfig)}
    references = []
    for i, entry in enumerate(algo.references):
        if isinstance(entry, ReferenceModelConfig):
            reference = entry
        elif isinstance(entry, str) and entry.strip():
            reference = ReferenceModelConfig(path=entry)
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"].strip():
            unknown = set(entry) - known
            if unknown:
                raise ConfigError(f"algorithm.references[{i}] has unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(sorted(known))}.")
            reference = ReferenceModelConfig(**entry)
        else:
            raise ConfigError(f"algorithm.references[{i}] is {entry!r}; give a model path / hub name, or a mapping "
                              f"with at least `path`.")
        references.append(reference)
    names = [r.name or r.path.rstrip("/").split("/")[-1].removeprefix("embedded:") for r in references]
    # The same model twice, or two checkpoints with the same folder name: prefix the index to tell them apart.
    names = [f"{i}_{name}" if names.count(name) > 1 else name for i, name in enumerate(names)]
    return [dataclasses.replace(r, name=n) for r, n in zip(references, names)]


def _validate_multiref(cfg: AlignConfig, algo: MultiRefDPOAlgorithmConfig) -> None:
    if not algo.references:
        raise ConfigError("algorithm.references is empty; list at least one reference model (path or hub name), "
                          "e.g. algorithm.references=[Qwen/Qwen2.5-0.5B-Instruct].")
    reference_models(algo)
    if algo.weighting in MULTIREF_NEEDS_VALIDATION and not algo.validation_size:
        raise ConfigError(f"weighting '{algo.weighting}' is computed on validation pairs carved from the training "
                          f"data, but algorithm.validation_size is 0; set it (the papers use 1000) or pick uniform, "
                          f"arwc, swcw or swcw_onehot.")
    if algo.weighting == "tsw" and algo.bandit_pairs > algo.validation_size:
        raise ConfigError(f"algorithm.bandit_pairs {algo.bandit_pairs} exceeds algorithm.validation_size "
                          f"{algo.validation_size}: tsw samples its per-step subset from the validation pairs.")
    for key, node in (("trainer.trl", cfg.trainer), ("algorithm.trl", algo)):
        clashing = sorted(set(node.trl) & MULTIREF_TRL_OWNED)
        if clashing:
            raise ConfigError(f"{key}: {', '.join(clashing)} would be ignored or overridden: multiref_dpo computes its "
                              f"own loss against cached reference log-probs and sets the evaluation schedule itself "
                              f"(algorithm.eval_steps; algorithm.data.max_length drops long pairs). Remove them.")
    if cfg.warm_start.max_steps:
        raise ConfigError("warm_start is not supported with multiref_dpo; set warm_start.max_steps=0 and start from "
                          "an SFT checkpoint instead.")
