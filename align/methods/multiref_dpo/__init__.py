"""Multi-reference DPO: MRPO or MDPO against K reference models, with a reference-weighting strategy
(docs/multiref_dpo.md)."""

from align.console import DPO_COLUMNS
from align.methods.multiref_dpo.config import MultiRefDPOAlgorithmConfig, check_multiref_dpo
from align.registry import DPO_CONFIG, Method, register_method

register_method(Method(name="multiref_dpo", config=MultiRefDPOAlgorithmConfig, trl_config=DPO_CONFIG,
                       check=check_multiref_dpo, steps="align.methods.multiref_dpo.steps", progress=DPO_COLUMNS,
                       metrics=("eval_preference_accuracy",)))
