"""The reward model's settings and checks: Bradley-Terry, the anchor-guided Gaussian reward model, or CausalRM on
TRL's RewardTrainer (docs/reward_models.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from align.config import AlignConfig, ConfigError, RewardDataConfig

REWARD_MODEL_OBJECTIVES = ("bradley_terry", "gaussian_anchor", "causal_rm")

@dataclass
class AnchorConfig:
    """gaussian_anchor: ordinal anchors that fix the scale and offset of mu and sigma."""

    count: int = 2  # 0 (pairs only: sigma is not identified), 1 (binary probit) or 2
    percentiles: List[float] = field(default_factory=lambda: [25.0, 75.0])  # of the standardised training score
    lam: float = 0.1  # weight of the anchor term
    fraction: float = 1.0  # share of training pairs that carry anchors (a fixed subset)

    limits: ClassVar[dict] = {"count": (0, 1, 2), "percentiles": "(0, 100)", "lam": ">= 0", "fraction": "(0, 1]"}


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

    limits: ClassVar[dict] = {"rho_01": "[0, 1)", "rho_10": "[0, 1)", "noise_quantile": "(0.5, 1)",
                              "propensity_clip": "(0, 1]", "aux_l2": ">= 0"}


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

    limits: ClassVar[dict] = {"objective": REWARD_MODEL_OBJECTIVES, "center_rewards_coefficient": ">= 0",
                              "eval_steps": ">= 0; 0 evaluates only before and after training"}


def _pair_of_columns(key: str, value, sizes: tuple[int, ...] = (2,)) -> None:
    if value is not None and len(value) not in sizes:
        raise ConfigError(f"{key} must list {' or '.join(map(str, sizes))} columns, got {list(value)}.")


def check_reward_model(cfg: AlignConfig, processes: int) -> None:
    """No LoRA; each objective's own settings only with it; column lists of the right length; anchors with a source
    of anchor labels; CausalRM's noise rates and propensity clip consistent."""
    algo = cfg.algorithm
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
