"""Every recipe composes and validates, GPU recipes included (for their process count, without loading models)."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from align.compose import RecipeError, available_recipes, resolve_recipe_args
from align.config import validate
from tests.conftest import REPO, compose

RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))


def processes_for(recipe: str) -> int:
    """`<...>-<N>n<G>g-...` recipes run on N nodes x G GPUs; everything else on one process."""
    match = re.search(r"-(\d+)n(\d+)g", recipe)
    return int(match.group(1)) * int(match.group(2)) if match else 1


def is_gpu_recipe(recipe: str) -> bool:
    return re.search(r"-(\d+)n(\d+)g", recipe) is not None


def test_there_are_cpu_and_gpu_recipes():
    assert "grpo-arithmetic-tiny" in RECIPES
    assert any(processes_for(r) > 1 for r in RECIPES)
    assert available_recipes() == RECIPES


# Recipes whose header says the user must supply a value (`???` in the config): a stand-in for the test.
REQUIRED = {
    "fhal-saferlhf-qwen2.5-1.5b-1n8g-zero2": ["reward.sources.0.kwargs.path=/models/safety-rm/final"],
    "reward-gaussian-helpsteer2-llama3.2-1b-1n8g-zero2": ["algorithm.data.source=/data/helpsteer2_pairs.jsonl"],
    "reward-bt-helpsteer2-llama3.2-1b-1n8g-zero2": ["algorithm.data.source=/data/helpsteer2_pairs.jsonl"],
    "reward-causal-feedback-llama3.2-1b-1n8g-zero2": ["algorithm.data.source=/data/feedback.jsonl"],
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_validates(recipe, monkeypatch):
    config = OmegaConf.to_object(compose([f"recipe={recipe}", *REQUIRED.get(recipe, [])]))
    if is_gpu_recipe(recipe):
        # GPU recipes ask for bf16 through dtype=auto; validate as if on their cluster, without a GPU here.
        assert config.model.dtype == "auto"
        monkeypatch.setattr("align.config.quantization_problem", lambda: None)
    validate(config, processes=processes_for(recipe))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_has_a_contract_docstring(recipe):
    text = (REPO / "recipes" / f"{recipe}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert "align.train" in text or "make quickstart" in text, "the header must show the exact launch line"


def test_unknown_recipe_lists_close_matches():
    with pytest.raises(RecipeError) as err:
        resolve_recipe_args(["recipe=grpo-arithmetic-tin"])
    assert "Did you mean: grpo-arithmetic-tiny" in str(err.value)
    assert "Available recipes" in str(err.value)


def test_user_recipe_file_outside_the_repo(tmp_path: Path):
    recipe = tmp_path / "my_experiment.yaml"
    recipe.write_text("# @package _global_\ndefaults:\n  - override /algorithm: sft\n  - _self_\n"
                      "trainer:\n  max_steps: 7\n")
    config = OmegaConf.to_object(compose([f"recipe={recipe}"]))
    assert config.algorithm.name == "sft"
    assert config.trainer.max_steps == 7


def test_missing_user_recipe_file(tmp_path: Path):
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_recipe_args([f"recipe={tmp_path / 'nope.yaml'}"])
