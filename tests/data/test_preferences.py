"""Reward-model data: the known-truth synthetic world, soft labels and orientation, canonical rows, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from align.config import RewardDataConfig, SyntheticPreferenceConfig
from align.data import DataError
from align.data.preferences import (
    VOCABULARY,
    load_reward_data,
    orient,
    prepare_feedback,
    prepare_pairs,
    random_responses,
    response_truth,
    soft_label_from_votes,
    synthetic_feedback,
    synthetic_preferences,
    unbiased_feedback_eval,
)


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- the synthetic world --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, mu, sigma", [
    ("It is reliable, ugly and spicy.", 1.0 - 1.0 + 0.0, 0.3 + 0.0 + 0.3 + 0.6),
    ("It is bold, quirky and weird.", 1.0 + 0.5 - 0.5, 0.3 + 0.6 + 0.6 + 0.6),
    ("It is broken, slow and plain.", -1.5, 0.3),
    ("BOLD and bold, really", 2.0, 0.3 + 1.2),  # case-insensitive; a repeated word counts each time
    ("Nothing known here.", 0.0, 0.3),
])
def test_response_truth_is_the_sum_of_word_values(text, mu, sigma):
    assert response_truth(text) == pytest.approx((mu, sigma))


def test_mu_and_sigma_vary_independently_over_random_responses():
    texts = random_responses(np.random.default_rng(0), 2000)
    mu, sigma = np.array([response_truth(t) for t in texts]).T
    assert abs(np.corrcoef(mu, sigma)[0, 1]) < 0.1
    assert mu.min() >= -3 and mu.max() <= 3 and sigma.min() >= 0.3 and sigma.max() <= 2.1
    assert mu.std() > 0.5 and sigma.std() > 0.2
    assert max(map(len, texts)) <= 60
    for text in texts[:50]:
        words = [w.strip(",.") for w in text.split()]
        assert len({w for w in words if w in VOCABULARY}) == 3


def test_generators_are_deterministic_by_seed():
    assert synthetic_preferences(50, seed=3) == synthetic_preferences(50, seed=3)
    assert synthetic_preferences(50, seed=3) != synthetic_preferences(50, seed=4)
    assert synthetic_feedback(50, seed=3) == synthetic_feedback(50, seed=3)
    assert unbiased_feedback_eval(50, seed=3) == unbiased_feedback_eval(50, seed=3)
    # Train and held-out feedback of one seed are independent draws, not the same responses.
    same = [a["response"] == b["response"] for a, b in zip(synthetic_feedback(50), unbiased_feedback_eval(50))]
    assert sum(same) < 5


def test_vote_shares_track_the_probit_of_the_truth():
    annotators = 2001
    rows = synthetic_preferences(300, seed=1, annotators=annotators)
    gaps = []
    for row in rows:
        assert row["chosen"] != row["rejected"]
        assert row["votes_chosen"] + row["votes_rejected"] == annotators
        assert row["votes_chosen"] > row["votes_rejected"]  # odd count: the chosen response has the majority
        assert (row["mu_chosen"], row["sigma_chosen"]) == response_truth(row["chosen"])
        assert (row["mu_rejected"], row["sigma_rejected"]) == response_truth(row["rejected"])
        z = (row["mu_chosen"] - row["mu_rejected"]) / math.hypot(row["sigma_chosen"], row["sigma_rejected"])
        gaps.append(abs(row["votes_chosen"] / annotators - phi(z)))
    assert np.mean(gaps) < 0.02
    # The judge scores are one more utility draw: standardised by the truth they are N(0, 1) at every sigma.
    z, sigma = np.array([((row[f"score_{side}"] - row[f"mu_{side}"]) / row[f"sigma_{side}"], row[f"sigma_{side}"])
                         for row in synthetic_preferences(2000, seed=2) for side in ("chosen", "rejected")]).T
    assert abs(z.mean()) < 0.1
    for group in (sigma < 1, sigma > 1.4):
        assert abs(z[group].std() - 1) < 0.1


def test_feedback_has_the_configured_selection_bias_and_label_noise():
    propensity, rho_01, rho_10 = (0.15, 0.6), 0.2, 0.1
    rows = synthetic_feedback(20000, seed=2, rho_01=rho_01, rho_10=rho_10, propensity=propensity, selection="label")
    y = np.array([r["true_label"] for r in rows])
    observed = np.array([r["observed"] for r in rows])
    assert all((r["label"] is None) == (r["observed"] == 0) for r in rows)
    assert all(r["true_propensity"] == propensity[r["true_label"]] for r in rows)
    for label in (0, 1):
        assert abs(observed[y == label].mean() - propensity[label]) < 0.02
        # The label world's selection depends on y only: given y, the visible quality of the response is irrelevant.
        mu = np.array([r["mu"] for r in rows])
        for looks in (mu < 0, mu > 0):
            assert abs(observed[(y == label) & looks].mean() - propensity[label]) < 0.03
    noisy = np.array([r["label"] if r["observed"] else -1 for r in rows])
    assert abs((noisy[(observed == 1) & (y == 1)] == 0).mean() - rho_01) < 0.03
    assert abs((noisy[(observed == 1) & (y == 0)] == 1).mean() - rho_10) < 0.03
    # y = 1[u > 0] with u ~ N(mu, sigma^2): P(y = 1) = Phi(mu / sigma) on average.
    assert abs(y.mean() - np.mean([phi(r["mu"] / r["sigma"]) for r in rows])) < 0.02

    held_out = unbiased_feedback_eval(500, seed=2)
    assert all(r["observed"] == 1 and r["label"] == r["true_label"] and r["true_propensity"] == 1.0
               for r in held_out)
    assert 0.3 < np.mean([r["true_label"] for r in held_out]) < 0.7


def test_text_world_selects_on_the_response_text_only():
    """The default world: P(feedback) is a function of the response (missing at random given the text)."""
    propensity = (0.15, 0.6)
    rows = synthetic_feedback(40000, seed=4, propensity=propensity)
    observed, y, p, mu = (np.array([r[k] for r in rows]) for k in ("observed", "true_label", "true_propensity", "mu"))
    for r in rows[:200]:  # the recorded propensity is E[propensity[y] | text] = low + (high - low) Phi(mu / sigma)
        assert r["true_propensity"] == pytest.approx(0.15 + 0.45 * phi(r["mu"] / r["sigma"]))
    by_text = {}
    for r in rows:
        by_text.setdefault(r["response"], set()).add(r["true_propensity"])
    assert all(len(values) == 1 for values in by_text.values())
    # The observation rate follows the visible quality of the response and matches the recorded propensity.
    assert abs(observed.mean() - p.mean()) < 0.01
    assert observed[mu > 0].mean() - observed[mu < 0].mean() > 0.2
    for group in (mu < -1, (mu >= -1) & (mu <= 1), mu > 1):
        assert abs(observed[group].mean() - p[group].mean()) < 0.02
    # Given the text, whether feedback is shown does not depend on the realised label.
    for low, high in ((0.25, 0.35), (0.35, 0.45), (0.45, 0.55)):
        band = (p >= low) & (p < high)
        assert abs(observed[band & (y == 1)].mean() - observed[band & (y == 0)].mean()) < 0.04
    # Both worlds draw the same responses, labels and flips; only who gives feedback differs.
    label_world = synthetic_feedback(len(rows), seed=4, propensity=propensity, selection="label")
    assert [(r["response"], r["true_label"]) for r in label_world] == [(r["response"], r["true_label"]) for r in rows]


@pytest.mark.parametrize("call, match", [
    (lambda: synthetic_preferences(5, annotators=0), "annotators must be >= 1"),
    (lambda: synthetic_feedback(5, rho_01=1.5), "rho_01 must be a probability"),
    (lambda: synthetic_feedback(5, propensity=(0.0, 0.5)), r"propensity must be .* in \(0, 1\]"),
    (lambda: synthetic_feedback(5, selection="user"), "selection must be one of text, label"),
])
def test_generator_arguments_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- soft labels and orientation ------------------------------------------------------------------------------------


def test_soft_label_from_votes_counts_ties_half():
    assert soft_label_from_votes(3, 1) == 0.75
    assert soft_label_from_votes(2, 1, 2) == pytest.approx(0.6)
    assert soft_label_from_votes(0, 0, 4) == 0.5
    assert soft_label_from_votes(0, 3) == 0.0
    with pytest.raises(ValueError, match="must be >= 0"):
        soft_label_from_votes(-1, 2)
    with pytest.raises(ValueError, match="no votes"):
        soft_label_from_votes(0, 0, 0)


def test_orient_swaps_the_pair_with_its_scores_and_anchors_and_drops_ties():
    row = {"prompt": [], "chosen": "a", "rejected": "b", "soft_label": 0.25, "score_chosen": 1.0,
           "score_rejected": 2.0, "anchor_chosen": 0, "anchor_rejected": 2}
    assert orient(row) == {"prompt": [], "chosen": "b", "rejected": "a", "soft_label": 0.75, "score_chosen": 2.0,
                           "score_rejected": 1.0, "anchor_chosen": 2, "anchor_rejected": 0}
    assert orient(dict(row, soft_label=0.8)) == dict(row, soft_label=0.8)
    assert orient(dict(row, soft_label=0.5)) is None
    assert orient(dict(row, margin=1.5))["margin"] == -1.5  # a margin of the first response over the second
    assert orient(dict(row, soft_label=0.8, margin=1.5))["margin"] == 1.5


def test_pairs_carry_a_margin_column_oriented_with_the_pair():
    rows = [{"prompt": "x", "chosen": "a", "rejected": "b", "share": 0.9, "m": 2},
            {"prompt": "y", "chosen": "a", "rejected": "b", "share": 0.2, "m": -1.5}]  # swapped: margin 1.5
    pairs, _ = prepare_pairs(rows, RewardDataConfig(label_column="share", margin_column="m"))
    assert [(p["chosen"], p["margin"]) for p in pairs] == [("a", 2.0), ("b", 1.5)]
    assert "margin" not in prepare_pairs(rows, RewardDataConfig(label_column="share"))[0][0]


# --- canonical pairs ------------------------------------------------------------------------------------------------


def test_pairs_with_votes_ties_scores_and_chat_responses():
    rows = [{"q": "Hi?", "good": [{"role": "assistant", "content": "Hello."}], "bad": "Go away.",
             "v": [3, 1, 0], "s": [0.5, -1]},
            {"q": "Hm?", "good": "Yes.", "bad": "No.", "v": [1, 2, 2], "s": [1, 2.5]},  # (1 + 1) / 5 < 0.5: swapped
            {"q": "Eh?", "good": "Maybe.", "bad": "Perhaps.", "v": [1, 1, 3], "s": [0, 0]}]  # a tie: dropped
    flat = [{"q": r["q"], "good": r["good"], "bad": r["bad"], "vc": r["v"][0], "vr": r["v"][1], "vt": r["v"][2],
             "sc": r["s"][0], "sr": r["s"][1]} for r in rows]
    cfg = RewardDataConfig(prompt_column="q", chosen_column="good", rejected_column="bad",
                           votes_columns=["vc", "vr", "vt"], score_columns=["sc", "sr"], system_prompt="Be kind.")
    pairs, dropped = prepare_pairs(flat, cfg)
    assert dropped == 1
    assert pairs == [
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
         "chosen": "Hello.", "rejected": "Go away.", "soft_label": 0.75, "score_chosen": 0.5, "score_rejected": -1.0},
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hm?"}],
         "chosen": "No.", "rejected": "Yes.", "soft_label": pytest.approx(0.6), "score_chosen": 2.5,
         "score_rejected": 1.0},
    ]


def test_pairs_from_a_label_column_anchors_and_a_preferred_index():
    rows = [{"prompt": "x", "r0": "zero", "r1": "one", "pick": 1, "share": 0.9, "a0": 2, "a1": 0.0},
            {"prompt": "y", "r0": "zero", "r1": "one", "pick": 0, "share": 0.3, "a0": 1, "a1": 2}]
    cfg = RewardDataConfig(response_columns=["r0", "r1"], preferred_index_column="pick", label_column="share",
                           anchor_columns=["a0", "a1"])
    pairs, dropped = prepare_pairs(rows, cfg)
    assert dropped == 0
    assert [(p["chosen"], p["rejected"], p["soft_label"], p["anchor_chosen"], p["anchor_rejected"]) for p in pairs] \
        == [("one", "zero", 0.9, 2, 0), ("one", "zero", pytest.approx(0.7), 2, 1)]
    assert all(isinstance(p["anchor_chosen"], int) and isinstance(p["anchor_rejected"], int) for p in pairs)
    assert prepare_pairs([{"prompt": "x", "chosen": "a", "rejected": "b"}], RewardDataConfig())[0][0]["soft_label"] \
        == 1.0


GOOD_PAIR = {"prompt": "p", "chosen": "a", "rejected": "b", "share": 0.7, "vc": 2, "vr": 1, "vt": 0, "sc": 0.1,
             "sr": 0.2, "ac": 0, "ar": 1, "r0": "x", "r1": "y", "pick": 0}


@pytest.mark.parametrize("changes, cfg, match", [
    ({}, dict(chosen_column="better"), r"no column 'better' \(columns: prompt, chosen, .*algorithm.data.chosen_column"),
    ({}, dict(votes_columns=["vc", "nope"]), r"no column 'nope'.*algorithm.data.votes_columns\[1\]"),
    ({"prompt": "  "}, {}, "row 0: prompt 'prompt' is empty.*algorithm.data.prompt_column"),
    ({"prompt": 7}, {}, "row 0: prompt 'prompt' is neither a string nor"),
    ({"rejected": ""}, {}, "row 0: response 'rejected' is empty.*algorithm.data.rejected_column"),
    ({"share": 1.5}, dict(label_column="share"), r"row 0: soft label 'share' is 1.5, not a number in \[0, 1\]"),
    ({"share": "0.7"}, dict(label_column="share"), "soft label 'share' is '0.7', not a number.*label_column"),
    ({"vc": -1}, dict(votes_columns=["vc", "vr"]), "row 0: votes vc, vr: vote counts must be >= 0.*votes_columns"),
    ({"vc": 1.5}, dict(votes_columns=["vc", "vr"]), "row 0: vote count 'vc' is 1.5, not an integer.*votes_columns"),
    ({"vc": 0, "vr": 0}, dict(votes_columns=["vc", "vr", "vt"]), "row 0: votes vc, vr, vt: there are no votes"),
    ({"sc": float("nan")}, dict(score_columns=["sc", "sr"]), "row 0: score 'sc' is nan, not a finite number"),
    ({"sr": None}, dict(score_columns=["sc", "sr"]), "score 'sr' is None, not a finite number.*score_columns"),
    ({"ar": -1}, dict(anchor_columns=["ac", "ar"]), "row 0: anchor 'ar' is -1, not a non-negative integer"),
    ({"ac": 0.5}, dict(anchor_columns=["ac", "ar"]), "anchor 'ac' is 0.5, not a non-negative.*anchor_columns"),
    ({"sc": "big"}, dict(margin_column="sc"), "row 0: margin 'sc' is 'big', not a finite number.*margin_column"),
    ({}, dict(margin_column="nope"), r"no column 'nope'.*algorithm.data.margin_column"),
    ({"pick": 2}, dict(response_columns=["r0", "r1"], preferred_index_column="pick"),
     "row 0: preferred index 'pick' is 2, not 0 or 1.*algorithm.data.preferred_index_column"),
    ({}, dict(label_column="share", votes_columns=["vc", "vr"]),
     "label_column and algorithm.data.votes_columns are both set"),
    ({}, dict(score_columns=["sc", "sr"], anchor_columns=["ac", "ar"]),
     "score_columns and algorithm.data.anchor_columns are both set"),
    ({}, dict(votes_columns=["vc"]), r"votes_columns must list 2 columns .* or 3 .*got \['vc'\]"),
    ({}, dict(score_columns=["sc", "sr", "ac"]), "score_columns must list 2 columns"),
    ({}, dict(anchor_columns=["ac"]), "anchor_columns must list 2 columns"),
    ({}, dict(response_columns=["r0"], preferred_index_column="pick"), "response_columns .* go together"),
    ({}, dict(response_columns=["r0", "r1"]), "response_columns .* and algorithm.data.preferred_index_column go"),
    ({"share": 0.5}, dict(label_column="share"), "all 1 pairs of .* are ties"),
])
def test_pairs_errors_name_the_row_column_and_key(changes, cfg, match):
    with pytest.raises(DataError, match=match):
        prepare_pairs([dict(GOOD_PAIR, **changes)], RewardDataConfig(**cfg))


def test_pairs_error_names_the_failing_row():
    rows = [GOOD_PAIR, dict(GOOD_PAIR, vr=2.5)]
    with pytest.raises(DataError, match="my split row 1: vote count 'vr' is 2.5"):
        prepare_pairs(rows, RewardDataConfig(votes_columns=["vc", "vr"]), where="my split")
    with pytest.raises(DataError, match="has no rows"):
        prepare_pairs([], RewardDataConfig())


# --- canonical feedback ---------------------------------------------------------------------------------------------


def test_feedback_rows_accept_bools_and_floats_and_ignore_unobserved_labels():
    rows = [{"prompt": "p", "response": "r", "observed": True, "label": 1.0, "p": 0.5, "truth": 1},
            {"prompt": "q", "response": "s", "observed": 0.0, "label": None, "p": 1, "truth": False},
            {"prompt": "q", "response": "t", "observed": 0, "label": "whatever", "p": 0.2, "truth": 0}]
    cfg = RewardDataConfig(propensity_column="p", true_label_column="truth")
    assert prepare_feedback(rows, cfg) == [
        {"prompt": [{"role": "user", "content": "p"}], "response": "r", "observed": 1, "label": 1,
         "propensity": 0.5, "true_label": 1},
        {"prompt": [{"role": "user", "content": "q"}], "response": "s", "observed": 0, "label": 0,
         "propensity": 1.0, "true_label": 0},
        {"prompt": [{"role": "user", "content": "q"}], "response": "t", "observed": 0, "label": 0,
         "propensity": 0.2, "true_label": 0},
    ]
    # A configured true-label column that the split lacks is refused: metrics would silently use noisy labels.
    with pytest.raises(DataError, match="no 'truth' column.*true_label_column"):
        prepare_feedback([{k: v for k, v in rows[0].items() if k != "truth"}], cfg)


GOOD_FEEDBACK = {"prompt": "p", "response": "r", "observed": 1, "label": 0, "p": 0.5, "truth": 0}


@pytest.mark.parametrize("changes, cfg, match", [
    ({}, dict(observed_column="clicked"), r"no column 'clicked' \(columns: .*algorithm.data.observed_column"),
    ({}, dict(propensity_column="prop"), "no column 'prop'.*algorithm.data.propensity_column"),
    ({"response": None}, {}, "row 0: response 'response' is empty.*algorithm.data.response_column"),
    ({"observed": 2}, {}, "row 0: observed 'observed' is 2, not 0 or 1.*algorithm.data.observed_column"),
    ({"observed": "yes"}, {}, "observed 'observed' is 'yes', not 0 or 1"),
    ({"label": None}, {}, "row 0: label 'label' is None on an observed row.*algorithm.data.feedback_column"),
    ({"label": 0.5}, {}, "label 'label' is 0.5 on an observed row"),
    ({"p": 0.0}, dict(propensity_column="p"),
     r"propensities must be probabilities P\(feedback \| row\) in \(0, 1\]; .* row 0: 'p' is 0.0"),
    ({"p": 1.2}, dict(propensity_column="p"), "propensities must be probabilities.*algorithm.data.propensity_column"),
    ({"truth": 3}, dict(true_label_column="truth"), "row 0: true label 'truth' is 3.*true_label_column"),
    ({"observed": 0}, {}, "no row of .* has feedback.*algorithm.data.observed_column"),
])
def test_feedback_errors_name_the_row_column_and_key(changes, cfg, match):
    with pytest.raises(DataError, match=match):
        prepare_feedback([dict(GOOD_FEEDBACK, **changes)], RewardDataConfig(**cfg))


# --- loading --------------------------------------------------------------------------------------------------------


def test_load_synthetic_pairs():
    cfg = RewardDataConfig(synthetic=SyntheticPreferenceConfig(num_train=60, num_eval=20, seed=5), system_prompt="S.")
    train, held_out, info = load_reward_data(cfg, "gaussian_anchor")
    assert (len(train), len(held_out), info) == (60, 20, {"dropped_ties": 0, "dropped_ties_eval": 0})
    raw = synthetic_preferences(80, seed=5)
    for row, source in zip(train + held_out, raw):
        assert set(row) == {"prompt", "chosen", "rejected", "soft_label", "score_chosen", "score_rejected",
                            "mu_chosen", "sigma_chosen", "mu_rejected", "sigma_rejected"}
        assert row["prompt"] == [{"role": "system", "content": "S."}, {"role": "user", "content": source["prompt"]}]
        assert row["soft_label"] == source["votes_chosen"] / 5 and 0.5 < row["soft_label"] <= 1
        assert (row["chosen"], row["score_rejected"], row["sigma_rejected"]) == \
            (source["chosen"], source["score_rejected"], source["sigma_rejected"])
    assert load_reward_data(cfg, "gaussian_anchor") == (train, held_out, info)
    # An even annotator count produces ties, which are dropped and counted.
    even = dataclasses.replace(cfg, max_rows=50,
                               synthetic=SyntheticPreferenceConfig(num_train=60, num_eval=0, annotators=2))
    train, held_out, info = load_reward_data(even, "bradley_terry")
    ties = sum(r["votes_chosen"] == r["votes_rejected"] for r in synthetic_preferences(60, annotators=2)[:50])
    assert held_out is None and ties > 0 and info["dropped_ties"] == ties and len(train) == 50 - ties


def test_load_synthetic_feedback_keeps_true_labels_out_of_training():
    synthetic = SyntheticPreferenceConfig(num_train=300, num_eval=50, propensity=[0.2, 0.9], selection="label")
    train, held_out, info = load_reward_data(RewardDataConfig(synthetic=synthetic), "causal_rm")
    assert len(train) == 300 and len(held_out) == 50
    assert all(set(r) == {"prompt", "response", "observed", "label"} for r in train)
    assert info == {"observed_rows": sum(r["observed"] for r in train)} and 0 < info["observed_rows"] < 300
    assert all(set(r) == {"prompt", "response", "observed", "label", "true_label", "mu", "sigma"} and r["observed"]
               and r["label"] == r["true_label"] for r in held_out)
    known = RewardDataConfig(synthetic=synthetic, propensity_column="true_propensity")
    train, held_out, _ = load_reward_data(known, "causal_rm")
    assert {r["propensity"] for r in train} == {0.2, 0.9} and {r["propensity"] for r in held_out} == {1.0}
    text_world = RewardDataConfig(synthetic=dataclasses.replace(synthetic, selection="text"),
                                  propensity_column="true_propensity")
    train, _, _ = load_reward_data(text_world, "causal_rm")
    assert [r["propensity"] for r in train] == [r["true_propensity"] for r in synthetic_feedback(300, 0, 0.2, 0.1,
                                                                                                 (0.2, 0.9))]
    assert len({r["propensity"] for r in train}) > 2
    with pytest.raises(DataError, match=r"algorithm.data.synthetic.propensity must be"):
        load_reward_data(RewardDataConfig(synthetic=SyntheticPreferenceConfig(propensity=[0.5])), "causal_rm")
    with pytest.raises(DataError, match="algorithm.data.synthetic.annotators must be >= 1"):
        load_reward_data(RewardDataConfig(synthetic=SyntheticPreferenceConfig(annotators=0)), "bradley_terry")


def test_load_pairs_file_with_two_responses_votes_and_a_carved_held_out(tmp_path):
    rows = [{"prompt": f"q{i}", "r0": f"first {i}", "r1": f"second {i}", "pick": i % 2, "up": 2, "down": i % 3,
             "tie": 1} for i in range(8)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = RewardDataConfig(source=path, response_columns=["r0", "r1"], preferred_index_column="pick",
                           votes_columns=["up", "down", "tie"], eval_size=3, max_rows=4)
    train, held_out, info = load_reward_data(cfg, "bradley_terry")
    # Rows 2 and 5 have up == down: ties, dropped. Held-out = the last 3 rows (5, 6, 7); train = the first 4 of 0..4.
    assert [r["prompt"][0]["content"] for r in train] == ["q0", "q1", "q3"]
    assert [r["prompt"][0]["content"] for r in held_out] == ["q6", "q7"]
    assert info == {"dropped_ties": 1, "dropped_ties_eval": 1}
    assert (train[1]["chosen"], train[1]["rejected"]) == ("second 1", "first 1")
    assert [r["soft_label"] for r in train] == [pytest.approx(2.5 / 3), pytest.approx(2.5 / 4), pytest.approx(2.5 / 3)]
    with pytest.raises(DataError, match="algorithm.data.eval_split is 'test' .* Set algorithm.data.eval_size"):
        load_reward_data(dataclasses.replace(cfg, eval_split="test"), "bradley_terry")
    with pytest.raises(DataError, match="algorithm.data.eval_size 8 leaves no training rows"):
        load_reward_data(dataclasses.replace(cfg, eval_size=8), "bradley_terry")
    with pytest.raises(DataError, match="algorithm.data.source .* does not exist"):
        load_reward_data(dataclasses.replace(cfg, source=str(tmp_path / "missing.jsonl")), "bradley_terry")


def test_load_feedback_file_with_propensities_and_held_out_true_labels(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"r{i}", "seen": int(i % 2 == 0), "thumb": (i // 2) % 2 if i % 2 == 0
             else None, "p": 0.25 + 0.05 * i, "clean": i % 2} for i in range(10)]
    path = write_jsonl(tmp_path / "feedback.jsonl", rows)
    cfg = RewardDataConfig(source=path, observed_column="seen", feedback_column="thumb", propensity_column="p",
                           true_label_column="clean", eval_size=4)
    train, held_out, info = load_reward_data(cfg, "causal_rm")
    assert len(train) == 6 and len(held_out) == 4 and info == {"observed_rows": 3}
    assert all("true_label" not in r for r in train)
    assert [r["true_label"] for r in held_out] == [0, 1, 0, 1]
    assert [(r["observed"], r["label"], r["propensity"]) for r in train[:3]] == \
        [(1, 0, 0.25), (0, 0, pytest.approx(0.3)), (1, 1, pytest.approx(0.35))]
    rows[7]["p"] = 0
    path = write_jsonl(tmp_path / "feedback.jsonl", rows)
    with pytest.raises(DataError, match=r"propensities must be probabilities .*last 4 rows of split train\) row 1"):
        load_reward_data(cfg, "causal_rm")
