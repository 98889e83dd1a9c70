"""Model loaders turn a refused `model.attn_implementation` into one error naming the key."""

import pytest

from align.models import ModelLoadError, ensure_tiny, load_causal_lm
from align.rewards.reward_model import load_reward_model


@pytest.mark.parametrize("load", [
    lambda path, attn: load_causal_lm(path, attn_implementation=attn),
    lambda path, attn: load_reward_model(path, "bradley_terry", attn_implementation=attn),
])
@pytest.mark.parametrize("attn, reason", [
    ("flashy", "is not supported"),  # not a name transformers knows
    ("flash_attention_2", "FlashAttention2"),  # a known kernel whose package is not installed here
])
def test_a_refused_attention_implementation_names_the_key(load, attn, reason):
    with pytest.raises(ModelLoadError, match=f"model.attn_implementation '{attn}' cannot load .*{reason}.*sdpa"):
        load(str(ensure_tiny()), attn)
    assert load(str(ensure_tiny()), "eager") is not None
