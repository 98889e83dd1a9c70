"""Multi-reference DPO's settings and checks: MRPO or MDPO against K reference models with a reference-weighting
strategy (docs/multiref_dpo.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from align.config import DTYPES, AlignConfig, ConfigError, RewardDataConfig, model_path_problem

MULTIREF_LOSSES = ("mrpo", "mdpo")
MULTIREF_WEIGHTINGS = ("uniform", "arwc", "vdw", "vaw", "swcw", "swcw_onehot", "tsw")
MULTIREF_NEEDS_VALIDATION = ("vdw", "vaw", "tsw")
# DPOConfig fields the multiref_dpo trainer sets itself or that its loss, data path and reference cache bypass.
MULTIREF_TRL_OWNED = {
    "max_length", "truncation_mode", "padding_free", "dataset_num_proc", "precompute_ref_log_probs",
    "precompute_ref_batch_size", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps", "loss_type",
    "loss_weights", "label_smoothing", "ld_alpha", "use_weighting", "f_divergence_type", "f_alpha_divergence_coef",
    "discopop_tau", "router_aux_loss_coef", "eval_strategy", "eval_steps", "eval_on_start",
}


@dataclass
class ReferenceModelConfig:
    """One reference model of multi-reference DPO; it scores with its own tokenizer and chat template."""

    path: str = MISSING  # local dir, hub name, or embedded:*
    revision: Optional[str] = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template: Optional[str] = None  # Jinja template overriding the tokenizer's own
    name: Optional[str] = None  # label in metrics (weights/<name>); default: the last part of the path

    limits: ClassVar[dict] = {"dtype": DTYPES}


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

    limits: ClassVar[dict] = {"loss": MULTIREF_LOSSES, "weighting": MULTIREF_WEIGHTINGS, "beta": "> 0",
                              "validation_size": ">= 0", "window": ">= 1", "prior": "> 0", "bandit_pairs": ">= 1",
                              "precompute_batch_size": ">= 1",
                              "eval_steps": ">= 0; 0 evaluates only before and after training"}


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


def check_multiref_dpo(cfg: AlignConfig, processes: int) -> None:
    """At least one reference, each a well-formed entry naming a model that can exist; validation pairs for the
    weightings that read them; no TRL setting the method's own loss and data path would ignore."""
    algo = cfg.algorithm
    if not algo.references:
        raise ConfigError("algorithm.references is empty; list at least one reference model (path or hub name), "
                          "e.g. algorithm.references=[Qwen/Qwen2.5-0.5B-Instruct].")
    for i, reference in enumerate(reference_models(algo)):
        if problem := model_path_problem(reference.path):
            raise ConfigError(f"algorithm.references[{i}]: {problem}")
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
