"""Reward models on TRL's RewardTrainer: Bradley-Terry, the anchor-guided Gaussian reward model, and CausalRM
(docs/reward_models.md). The final model scores as a reward source (`reward=reward_model`)."""

from align.console import REWARD_MODEL_COLUMNS
from align.methods.reward_model.config import RewardModelAlgorithmConfig, check_reward_model
from align.registry import REWARD_CONFIG, Method, register_method

register_method(Method(name="reward_model", config=RewardModelAlgorithmConfig, trl_config=REWARD_CONFIG,
                       check=check_reward_model, steps="align.methods.reward_model.steps",
                       progress=REWARD_MODEL_COLUMNS,
                       metrics=("eval_accuracy", "eval_auc", "eval_brier", "eval_cross_entropy", "eval_sigma_mean")))
