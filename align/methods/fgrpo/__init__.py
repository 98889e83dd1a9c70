"""f-GRPO (a variational f-divergence loss on GRPO's groups) and f-HAL (f-GRPO plus an offline pairs loss)
(docs/fgrpo.md)."""

from align.console import GRPO_COLUMNS
from align.methods.fgrpo.config import FGRPOAlgorithmConfig, FHALAlgorithmConfig, check_fgrpo, check_fhal
from align.registry import GRPO_CONFIG, Method, register_method

register_method(Method(name="fgrpo", config=FGRPOAlgorithmConfig, trl_config=GRPO_CONFIG, check=check_fgrpo,
                       steps="align.methods.fgrpo.steps", progress=GRPO_COLUMNS, warm_start=True))
register_method(Method(name="fhal", config=FHALAlgorithmConfig, trl_config=GRPO_CONFIG, check=check_fhal,
                       steps="align.methods.fgrpo.steps", progress=GRPO_COLUMNS, warm_start=True))
