"""Resolving, guarding, combining and preflighting reward sources."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from align.config import RewardSourceConfig
from align.rewards import (
    RewardConfigError,
    RewardError,
    build_reward_sources,
    guard,
    preflight,
    resolve_reward,
    weighted_sum,
)
from align.rewards.verifiers import exact_match, numeric_match
from tests.rewards import user_rewards

TRL_EXTRAS = {"trainer_state": None, "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}


def call(fn, completions, prompts=None, **columns):
    """Call a reward source the way GRPOTrainer does."""
    prompts = prompts if prompts is not None else [f"question {i}" for i in range(len(completions))]
    return fn(prompts=prompts, completions=completions, completion_ids=None, **columns, **TRL_EXTRAS)


def constant(values):
    """A reward source that returns `values` whatever it is given."""

    def source(prompts, completions, completion_ids=None, **kwargs):
        return list(values)

    return source


# --- resolve_reward


def test_resolve_builtin():
    assert resolve_reward("exact_match") is exact_match


def test_resolve_import_path_with_colon_and_dot():
    assert resolve_reward("tests.rewards.user_rewards:length_penalty") is user_rewards.length_penalty
    assert resolve_reward("tests.rewards.user_rewards.length_penalty") is user_rewards.length_penalty
    assert resolve_reward("tests.rewards.user_rewards:scorer") is user_rewards.scorer


def test_resolve_binds_kwargs_and_keeps_name():
    fn = resolve_reward("tests.rewards.user_rewards:length_penalty", {"scale": 2.0})
    assert fn.__name__ == "length_penalty"
    assert call(fn, ["x" * 50]) == [-1.0]
    strict = resolve_reward("numeric_match", {"rel_tol": 1e-2})
    assert strict.__name__ == "numeric_match"
    assert call(strict, ["85.5"], answer=["85"]) == [1.0]
    assert call(numeric_match, ["85.5"], answer=["85"]) == [0.0]


def test_resolve_accepts_omegaconf_kwargs():
    fn = resolve_reward("numeric_match", OmegaConf.create({"rel_tol": 0.1}))
    assert fn.keywords == {"rel_tol": 0.1} and type(fn.keywords["rel_tol"]) is float


def test_resolve_rejects_unknown_option_for_builtin():
    with pytest.raises(RewardConfigError, match=r"'numeric_match' has no option 'rel_toll'.*rel_tol"):
        resolve_reward("numeric_match", {"rel_toll": 0.1})
    with pytest.raises(RewardConfigError, match="no option 'completions'"):
        resolve_reward("tests.rewards.user_rewards:length_penalty", {"completions": []})
    with pytest.raises(RewardConfigError, match="no option 'scale'"):
        resolve_reward("tests.rewards.user_rewards:no_kwargs", {"scale": 1})
    # A user function with **kwargs may take options it does not name.
    resolve_reward("tests.rewards.user_rewards:length_penalty", {"anything": 1})


def test_unknown_builtin_lists_builtins_and_suggests():
    with pytest.raises(RewardConfigError) as info:
        resolve_reward("boxed_mach")
    message = str(info.value)
    assert "Unknown reward source 'boxed_mach'" in message
    assert "Did you mean 'boxed_match'?" in message
    for name in ("exact_match", "numeric_match", "boxed_match", "format_boxed"):
        assert name in message
    with pytest.raises(RewardConfigError) as info:
        resolve_reward("zzz")
    assert "Did you mean" not in str(info.value)


def test_import_failures():
    with pytest.raises(
        RewardConfigError, match=r"cannot import module 'no_such_pkg\.mod'.*ModuleNotFoundError"
    ) as info:
        resolve_reward("no_such_pkg.mod:fn")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    with pytest.raises(RewardConfigError, match="has no attribute 'missing'"):
        resolve_reward("tests.rewards.user_rewards:missing")
    with pytest.raises(RewardConfigError, match="not a function"):
        resolve_reward("tests.rewards.user_rewards:NOT_A_FUNCTION")
    with pytest.raises(RewardConfigError, match="not a function"):
        resolve_reward("tests.rewards.user_rewards:Scorer")  # the class, not an instance


# --- guard


def test_guard_names_and_passes_through():
    guarded = guard(user_rewards.needs_answer, "accuracy")
    assert guarded.__name__ == "accuracy"
    assert call(guarded, ["a", "b", "c"], answer=["a", "x", None]) == [1.0, 0.0, None]


def test_guard_names_failing_sample():
    guarded = guard(user_rewards.needs_answer, "accuracy")
    prompts = ["p0", "p1", "p2", "What is " + "long " * 100]
    with pytest.raises(RewardError) as info:
        call(guarded, ["a", "b", "c", "the completion"], prompts=prompts, answer=["a", "b", "c", "boom"])
    message = str(info.value)
    assert "reward function 'accuracy' raised ValueError('cannot score this answer') on sample 3" in message
    assert "'the completion'" in message and "..." in message  # long prompt truncated
    assert len(message) < 600
    assert isinstance(info.value.__cause__, ValueError)


def test_guard_names_batch_when_no_single_sample_fails():
    def needs_pairs(prompts, completions, **kwargs):
        if len(completions) == 1:
            raise KeyError(
                "a different failure"
            )  # not the same error, so it does not count as reproducing it
        raise RuntimeError("batch-level failure")

    with pytest.raises(
        RewardError, match=r"'pairs' raised RuntimeError\('batch-level failure'\) on a batch of 3"
    ):
        call(guard(needs_pairs, "pairs"), ["a", "b", "c"])


def test_guard_slices_only_aligned_columns():
    seen = []

    def record(prompts, completions, completion_ids=None, answer=None, meta=None, **kwargs):
        seen.append((list(completions), answer, meta))
        if "bad" in completions:
            raise KeyError("bad")
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match="on sample 1"):
        call(guard(record, "record"), ["ok", "bad"], answer=["1", "2"], meta="shared")
    assert seen[1:] == [(["ok"], ["1"], "shared"), (["bad"], ["2"], "shared")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_guard_rejects_non_finite(bad):
    with pytest.raises(RewardError) as info:
        call(guard(constant([1.0, bad]), "score"), ["a", "b"])
    message = str(info.value)
    assert "'score'" in message and "sample 1" in message and "'b'" in message
    assert "return None" in message


def test_guard_rejects_wrong_length_and_types():
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        call(guard(constant([1.0]), "short"), ["a", "b"])
    with pytest.raises(RewardError, match="returned a float"):
        call(guard(lambda **kwargs: 1.0, "scalar"), ["a"])
    with pytest.raises(RewardError, match=r"returned '1' \(str\) for sample 0"):
        call(guard(constant(["1"]), "text"), ["a"])


def test_guard_converts_scalars_to_float():
    values = [True, 2, np.int64(3), np.float32(0.5), torch.tensor(1.5), None]
    out = call(guard(constant(values), "mixed"), list("abcdef"))
    assert out == [1.0, 2.0, 3.0, 0.5, 1.5, None]
    assert all(type(v) is float for v in out[:-1])


def test_guard_rejects_async():
    async def fn(prompts, completions, **kwargs):
        return []

    with pytest.raises(RewardConfigError, match="async"):
        guard(fn, "fn")


# --- weighted_sum

# Rewards of three sources on five samples (None = not applicable), their weights, and the hand-computed sums.
TABLE = [
    [1.0, None, 0.0, None, 1.0],
    [0.5, 1.0, None, None, 0.0],
    [None, 2.0, 1.0, None, -1.0],
]
WEIGHTS = [1.0, 0.1, 2.0]
EXPECTED = [1.05, 4.1, 2.0, None, -1.0]


def test_weighted_sum_by_hand():
    combined = weighted_sum([constant(column) for column in TABLE], WEIGHTS)
    assert combined.__name__ == "weighted_sum"
    out = call(combined, list("abcde"))
    assert out[3] is None
    assert [v for v in out if v is not None] == pytest.approx([v for v in EXPECTED if v is not None])


def test_weighted_sum_matches_trl_nansum():
    # GRPOTrainer: None -> NaN, (rewards_per_func * weights).nansum(dim=1), rows that are all NaN marked NaN.
    rewards_per_func = torch.tensor([[math.nan if r is None else r for r in col] for col in TABLE]).T
    trl = (rewards_per_func * torch.tensor(WEIGHTS).unsqueeze(0)).nansum(dim=1)
    trl[torch.isnan(rewards_per_func).all(dim=1)] = math.nan
    out = call(weighted_sum([constant(column) for column in TABLE], WEIGHTS), list("abcde"))
    ours = torch.tensor([math.nan if v is None else v for v in out])
    torch.testing.assert_close(ours, trl, equal_nan=True)


def test_weighted_sum_needs_matching_weights():
    with pytest.raises(RewardConfigError, match="2 sources but 1 weights"):
        weighted_sum([constant([1.0]), constant([1.0])], [1.0])


# --- build_reward_sources


def test_build_reward_sources_names_and_weights():
    configs = [
        RewardSourceConfig(name="boxed_match", weight=1.0),
        RewardSourceConfig(name="format_boxed", weight=0.1),
        RewardSourceConfig(
            name="tests.rewards.user_rewards:length_penalty", weight=-0.5, kwargs={"scale": 2.0}
        ),
        RewardSourceConfig(name="boxed_match", weight=0.5),
        RewardSourceConfig(name="tests.rewards.user_rewards:scorer"),
        RewardSourceConfig(name="boxed_match", weight=0.25),
    ]
    sources, weights = build_reward_sources(configs)
    assert [s.__name__ for s in sources] == [
        "boxed_match",
        "format_boxed",
        "length_penalty",
        "boxed_match_2",
        "Scorer",
        "boxed_match_3",
    ]
    assert weights == [1.0, 0.1, -0.5, 0.5, 1.0, 0.25]
    assert call(sources[2], ["x" * 50]) == [-1.0]  # kwargs bound


def test_build_reward_sources_from_hydra_config():
    schema = OmegaConf.structured(RewardSourceConfig)
    configs = [OmegaConf.merge(schema, {"name": "numeric_match", "weight": 2, "kwargs": {"rel_tol": 0.1}})]
    sources, weights = build_reward_sources(configs)
    assert weights == [2.0]
    assert call(sources[0], ["9.5"], answer=["10"]) == [1.0]


def test_build_reward_sources_rejects_bad_weight():
    with pytest.raises(RewardConfigError, match="weight nan"):
        build_reward_sources([RewardSourceConfig(name="exact_match", weight=float("nan"))])


# --- preflight


# Training rows as the data layer produces them; the third one makes `needs_answer` raise.
ROWS = [
    {
        "prompt": [{"role": "user", "content": "Compute 47+38."}],
        "answer": "85",
        "solution": "7+8=15, carry 1; 4+3+1=8. Answer: \\boxed{85}",
    },
    {"prompt": [{"role": "user", "content": "Compute 10+5."}], "answer": "15", "solution": "\\boxed{15}"},
    {"prompt": [{"role": "user", "content": "Compute 1+1."}], "answer": "boom", "solution": "\\boxed{2}"},
]


def test_preflight_passes_good_sources_with_trl_arguments():
    seen = {}

    def spy(prompts, completions, completion_ids=None, **kwargs):
        seen.update(prompts=prompts, completions=completions, **kwargs)
        return [1.0] * len(completions)

    sources, _ = build_reward_sources(
        [RewardSourceConfig(name=n) for n in ("boxed_match", "format_boxed", "exact_match", "numeric_match")]
    )
    preflight(sources + [guard(spy, "spy")], ROWS)
    assert seen["completions"][0] == [{"role": "assistant", "content": ROWS[0]["solution"]}]
    assert len(seen["prompts"]) == 2 and seen["answer"] == ["85", "15"]
    assert {"trainer_state", "log_extra", "log_metric", "solution"} <= set(seen)
    assert "prompt" not in seen


def test_preflight_raises_on_bad_source():
    bad = guard(user_rewards.needs_answer, "needs_answer")
    preflight([bad], ROWS)  # the first two rows are fine
    with pytest.raises(RewardError, match="'needs_answer' raised ValueError.*sample 2"):
        preflight([bad], ROWS, num_rows=3)


def test_preflight_catches_missing_kwargs_and_missing_columns():
    hint = r"'no_kwargs' raised TypeError.*unexpected keyword.*end the signature with \*\*kwargs"
    with pytest.raises(RewardError, match=hint):
        preflight([guard(user_rewards.no_kwargs, "no_kwargs")], ROWS)
    rows = [{"prompt": "Compute 1+1.", "question_id": 7}]
    with pytest.raises(RewardError, match="'answer' column"):
        preflight(build_reward_sources([RewardSourceConfig(name="boxed_match")])[0], rows)
