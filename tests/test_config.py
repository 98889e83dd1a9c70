"""Config validation: every semantic error names the key, shows the arithmetic, and says what to change."""

import pytest
from omegaconf import OmegaConf

from align.config import ConfigError, validate
from align.methods.grpo.config import GRPOAlgorithmConfig, generation_batch_size
from align.methods.sft.config import SFTAlgorithmConfig
from tests.conftest import compose


def typed(overrides):
    return OmegaConf.to_object(compose(overrides))


def test_default_config_composes_to_typed_grpo():
    config = typed([])
    assert isinstance(config.algorithm, GRPOAlgorithmConfig)
    assert config.model.path == "embedded:tiny"
    validate(config, processes=1)


def test_algorithm_group_switches_schema():
    config = typed(["algorithm=sft"])
    assert isinstance(config.algorithm, SFTAlgorithmConfig)
    validate(config, processes=1)


def test_generation_batch_arithmetic_is_shown():
    config = typed(["trainer.per_device_train_batch_size=4", "algorithm.num_generations=8"])
    validate(config, processes=2)  # 4 x 2 x 1 = 8: fine
    with pytest.raises(ConfigError) as err:
        validate(config, processes=3)
    message = str(err.value)
    assert "generation batch 12 is not divisible by num_generations 8" in message
    assert "per_device_train_batch_size 4 x processes 3 x gradient_accumulation_steps 1 = 12" in message


def test_steps_per_generation_enters_the_arithmetic():
    config = typed(["trainer.per_device_train_batch_size=4", "algorithm.num_generations=8",
                    "algorithm.steps_per_generation=2"])
    assert generation_batch_size(config.algorithm, config.trainer, 1) == (
        8, "per_device_train_batch_size 4 x processes 1 x steps_per_generation 2 = 8")
    validate(config, processes=1)


@pytest.mark.parametrize("override, key", [
    ("algorithm.loss_type=ppo", "algorithm.loss_type"),
    ("algorithm.importance_sampling_level=batch", "algorithm.importance_sampling_level"),
    ("algorithm.scale_rewards=max", "algorithm.scale_rewards"),
    ("algorithm.num_generations=1", "algorithm.num_generations"),
    ("algorithm.beta=-0.1", "algorithm.beta"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.learning_rate=0", "trainer.learning_rate"),
    ("logger.backend=mlflow", "logger.backend"),
    ("model.lora.r=-1", "model.lora.r"),
    ("eval.every_steps=3", "eval.every_steps"),  # trainer.logging_steps is 2 in every case here

])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(typed([override, "trainer.logging_steps=2"]), processes=1)


def test_bf16_on_cpu_is_rejected_with_the_fix(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the check must hold on GPU machines too
    with pytest.raises(ConfigError, match="model.dtype=auto"):
        validate(typed(["model.dtype=bfloat16"]), processes=1)


def test_empty_reward_sources_rejected_for_grpo():
    with pytest.raises(ConfigError, match="reward.sources is empty"):
        validate(typed(["reward.sources=[]"]), processes=1)


def test_unknown_key_fails_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="learning_rat"):
        compose(["trainer.learning_rat=1e-3"])


def test_names_read_without_importing_match_the_imported_ones():
    """Validation reads TRL's config fields, transformers' attention names, the built-in reward sources and the
    synthetic tasks without importing them (seconds); each must equal what the import gives."""
    import dataclasses

    import trl
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from align.config import BUILTIN_REWARD_NAMES, SYNTHETIC_TASKS, attention_implementations, trl_config_fields
    from align.data import TASKS
    from align.registry import METHODS
    from align.rewards import BUILTIN_REWARDS

    for name, file in {method.trl_config for method in METHODS.values()}:
        assert trl_config_fields(name, file) == {f.name for f in dataclasses.fields(getattr(trl, name))}, name
    assert set(attention_implementations()) == {"eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()}
    assert BUILTIN_REWARD_NAMES == tuple(BUILTIN_REWARDS) and SYNTHETIC_TASKS == tuple(TASKS)


@pytest.mark.parametrize("name, problem", [
    ("boxed_match", None), ("my_pkg.rewards:score", None), ("my_pkg.rewards.score", None),
    ("boxd_match", "Did you mean 'boxed_match'?"), ("my_pkg.rewards:", "is not an import path"),
    ("my pkg:score", "is not an import path"), ("my_pkg..rewards:score", "is not an import path"),
])
def test_reward_source_names_are_checked_by_form(name, problem):
    from align.config import reward_source_problem

    assert (reward_source_problem(name) is None) if problem is None else problem in reward_source_problem(name)


@pytest.mark.parametrize("name, refused", [
    ("sdpa", False), ("eager", False), ("flash_attention_2", False), ("paged|sdpa", False),
    ("kernels-community/flash-attn2", False), ("kernels-community/flash-attn2@v1:flash_attn", False),
    ("flashy", True), ("flash_attention", True),
])
def test_attention_implementation_is_checked_before_anything_loads(name, refused):
    config = typed([f"model.attn_implementation='{name}'"])
    if not refused:
        validate(config, processes=1)
        return
    with pytest.raises(ConfigError, match=f"model.attn_implementation is '{name}'; choose one of: eager"):
        validate(config, processes=1)
    config.model.trust_remote_code = True  # the model's own code may register more implementations
    validate(config, processes=1)


def test_trl_passthrough_keys_are_checked_before_anything_loads():
    validate(typed(["+algorithm.trl.top_entropy_quantile=0.2", "+trainer.trl.adam_beta2=0.99"]), processes=1)
    with pytest.raises(ConfigError, match="not a field of TRL's GRPOConfig. Did you mean 'top_entropy_quantile'"):
        validate(typed(["+algorithm.trl.top_entropy_quantil=0.2"]), processes=1)
    with pytest.raises(ConfigError, match="set algorithm.beta instead"):
        validate(typed(["+algorithm.trl.beta=0.1"]), processes=1)
    with pytest.raises(ConfigError, match="SFTConfig"):
        validate(typed(["algorithm=sft", "+algorithm.trl.num_generations=4"]), processes=1)


@pytest.mark.parametrize("override, key", [
    ("algorithm.schedule=sometimes", "algorithm.schedule"),
    ("algorithm.trigger=always", "algorithm.trigger"),
    ("algorithm.light_rule=down", "algorithm.light_rule"),
    ("algorithm.light_low=0.5", "algorithm.light_low"),  # above light_alpha 0.35
    ("algorithm.hint.retries=-1", "algorithm.hint.retries"),
    ("algorithm.hint.max_tokens=0", "algorithm.hint.max_tokens"),
    ("algorithm.hint.temperature=-1", "algorithm.hint.temperature"),
    ("algorithm.hint.user_template='no fields'", "algorithm.hint.user_template"),
    ("algorithm.hint.solve_template='{question} only'", "algorithm.hint.solve_template"),
])
def test_bad_sage_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(typed(["algorithm=sage", override]), processes=1)


def test_sage_needs_whole_groups_on_every_process():
    """8 completions per process, G 8: fine on any process count; 4 per process x 2 processes is not."""
    validate(typed(["algorithm=sage", "trainer.per_device_train_batch_size=8"]), processes=2)
    with pytest.raises(ConfigError, match=r"each process's generation batch \(per_device_train_batch_size 4 x steps "
                                          r"1 = 4\) must be a multiple of num_generations 8"):
        validate(typed(["algorithm=sage", "trainer.per_device_train_batch_size=4"]), processes=2)


def test_hint_demonstrations_need_sage():
    with pytest.raises(ConfigError, match="warm_start.hints_column"):
        validate(typed(["warm_start.hints_column=hints", "warm_start.max_steps=10"]), processes=1)
    validate(typed(["warm_start.hints_column=hints"]), processes=1)  # no warm start: nothing to teach


@pytest.mark.parametrize("algorithm, override, key", [
    ("fgrpo", "algorithm.divergence=chi2", "algorithm.divergence"),
    ("fgrpo", "algorithm.beta=0", "algorithm.beta"),
    ("fgrpo", "algorithm.clamp=[1,2]", "algorithm.clamp"),
    ("fgrpo", "algorithm.loss_type=grpo", "algorithm.loss_type"),
    ("fhal", "algorithm.lam=1.5", "algorithm.lam"),
    ("fhal", "algorithm.pairs_per_step=0", "algorithm.pairs_per_step"),
    ("fhal", "trainer.gradient_accumulation_steps=3", "algorithm.pairs_per_step"),  # 8 pairs over 3 micro-batches
    ("fgrpo", "algorithm.num_iterations=2", "algorithm.num_iterations"),  # off-policy: no importance ratio
    ("fgrpo", "algorithm.steps_per_generation=2", "algorithm.steps_per_generation"),
    ("fgrpo", "algorithm.importance_sampling_level=sequence", "algorithm.importance_sampling_level"),
    ("fgrpo", "+algorithm.trl.top_entropy_quantile=0.2", "algorithm.trl.top_entropy_quantile"),
])
def test_bad_fgrpo_values_name_their_key(algorithm, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(typed([f"algorithm={algorithm}", override]), processes=1)


MULTIREF = ["recipe=multiref-dpo-prefs-tiny"]


@pytest.mark.parametrize("override, message", [
    ("algorithm.references=[]", "algorithm.references is empty"),
    ("algorithm.loss=ipo", "algorithm.loss is 'ipo'"),
    ("algorithm.weighting=best", "algorithm.weighting is 'best'"),
    ("algorithm.beta=0", "algorithm.beta must be > 0"),
    ("algorithm.window=0", "algorithm.window must be >= 1"),
    ("algorithm.prior=0", "algorithm.prior"),
    ("algorithm.validation_size=0", "weighting 'vaw' is computed on validation pairs"),
    ("algorithm.bandit_pairs=500", None),  # fine for vaw, which does not sample subsets
    ("'algorithm.references=[{path: embedded:tiny, revison: main}]'", "unknown key(s) revison"),
    ("'algorithm.references=[{name: x}]'", "algorithm.references[0]"),
    ("warm_start.max_steps=5", "algorithm=multiref_dpo has no warm start"),
    ("+algorithm.trl.bogus=1", "not a field of TRL.s DPOConfig"),
    ("+algorithm.trl.loss_type=[ipo]", "algorithm.trl: loss_type would be ignored"),
    ("+trainer.trl.max_length=64", "trainer.trl: max_length would be ignored"),
])
def test_bad_multiref_values_name_their_key(override, message):
    config = typed([*MULTIREF, override.strip("'")])
    if message is None:
        validate(config, processes=1)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(config, processes=1)


def test_tsw_subset_must_fit_in_the_validation_split():
    with pytest.raises(ConfigError, match="bandit_pairs 500 exceeds algorithm.validation_size 200"):
        validate(typed([*MULTIREF, "algorithm.weighting=tsw", "algorithm.bandit_pairs=500"]), processes=1)


def test_reference_entries_become_named_configs():
    from align.methods.multiref_dpo.config import reference_models

    config = typed([*MULTIREF, "algorithm.references=[embedded:tiny-pref:2,{path: /m/a/ckpt, name: mine},"
                               "/m/b/ckpt,/m/c/ckpt]"])
    names = [r.name for r in reference_models(config.algorithm)]
    assert names == ["tiny-pref:2", "mine", "2_ckpt", "3_ckpt"]


def test_qlora_needs_lora_and_a_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="set model.lora.r > 0"):
        validate(typed([*MULTIREF, "model.load_in_4bit=true"]), processes=1)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        validate(typed([*MULTIREF, "model.load_in_4bit=true", "model.lora.r=8"]), processes=1)
    monkeypatch.setattr("align.config.quantization_problem", lambda: None)
    validate(typed([*MULTIREF, "model.load_in_4bit=true", "model.lora.r=8"]), processes=1)


def test_every_numeric_setting_has_a_limit():
    """A new int / float setting must say its allowed range in its class's `limits`, so `validate` checks it before
    any load: the shared settings and every registered method's."""
    import dataclasses
    import sys
    import typing

    import align.config as config
    from align.registry import METHODS

    modules = {config, *(sys.modules[method.config.__module__] for method in METHODS.values())}
    classes = {cls for module in modules for cls in vars(module).values()
               if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__}
    assert len(classes) > 20
    numeric = {int, float, typing.Optional[int], typing.Optional[float], typing.List[int], typing.List[float]}
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
               if typing.get_type_hints(cls)[f.name] in numeric and config.setting_limit(cls, f.name) is None]
    assert not missing, f"no limits entry for {missing}"


def test_scheduler_choices_are_transformers_scheduler_types():
    from transformers.trainer_utils import SchedulerType

    from align.config import scheduler_types

    assert scheduler_types() == tuple(s.value for s in SchedulerType)


@pytest.mark.parametrize("spec, inside, outside", [
    (">= 1", [1, 7], [0, -1, float("inf")]),
    ("> 0", [1e-9, 3.0], [0, -2, float("nan")]),
    ("(0, 1]", [1e-9, 1], [0, 1.5]),
    ("[0, 1)", [0, 0.999], [1, -1e-9]),
    ("finite", [-5.0, 0], [float("inf"), float("-inf"), float("nan")]),
])
def test_limit_specs(spec, inside, outside):
    from align.config import within

    assert all(within(v, spec) for v in inside) and not any(within(v, spec) for v in outside)


@pytest.mark.parametrize("override, message", [
    ("+trainer.max_step=3", "trainer.max_step is not a setting of align .* Did you mean 'trainer.max_steps'"),
    ("+reward.sources.0.wieght=2", r"reward.sources\[0\].wieght .* Did you mean 'reward.sources\[0\].weight'"),
    ("+lerning_rate=1", "lerning_rate is not a setting"),
])
def test_keys_added_with_plus_are_refused_with_a_suggestion(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(typed([override]), processes=1)
    validate(typed(["+trainer.trl.adam_beta2=0.99"]), processes=1)  # open dicts take new keys
