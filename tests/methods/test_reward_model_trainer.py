"""Reward-model trainers on the tiny model: the three objectives end to end, the Gaussian checkpoint's round trip,
anchors, CausalRM's auxiliary estimates, the reward source and its use by GRPO."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from align.config import ConfigError, validate
from align.data.loading import to_messages
from align.data.preferences import synthetic_feedback, synthetic_preferences
from align.methods.reward_model.causal import causal_rm_inputs, fit_logistic, logistic_logits
from align.methods.reward_model.math import imputed_clean_probability, roc_auc, soft_bce
from align.methods.reward_model.trainer import (
    AlignRewardTrainer,
    attach_anchors,
    build_reward_model_trainer,
    features_on_every_process,
    tokenize_rows,
)
from align.models import TINY, load_tokenizer
from align.rewards import RewardError, guard
from align.rewards.reward_model import RewardModelScorer, load_reward_model, reward_model
from align.tokens import reward_input_ids
from tests.conftest import compose


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Canonical pair rows as load_reward_data gives them for the synthetic source."""
    from align.data.preferences import soft_label_from_votes

    return [{"prompt": to_messages(r["prompt"], None), "chosen": r["chosen"], "rejected": r["rejected"],
             "soft_label": soft_label_from_votes(r["votes_chosen"], r["votes_rejected"]),
             "score_chosen": r["score_chosen"], "score_rejected": r["score_rejected"]}
            for r in synthetic_preferences(n, seed=seed)]


def algorithm(overrides: list[str]):
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose(["algorithm=reward_model", *overrides])).algorithm


def common_args(tmp_path, steps: int = 3) -> dict:
    from align.methods.common import training_arguments

    cfg = compose(["algorithm=reward_model", f"trainer.output_dir={tmp_path}", f"trainer.max_steps={steps}",
                   "trainer.per_device_train_batch_size=8", "trainer.learning_rate=1e-3"])
    from omegaconf import OmegaConf

    return training_arguments(OmegaConf.to_object(cfg), tmp_path, [], "test")


# --- the three objectives end to end ----------------------------------------------------------------------------------


def test_gaussian_reward_model_learns_the_preferences_and_records_its_anchors(gaussian_reward_model):
    before, after = gaussian_reward_model["eval_before"], gaussian_reward_model["eval_after"]
    assert after["eval_accuracy"] > 0.7 and after["eval_accuracy"] > before["eval_accuracy"] + 0.1
    assert after["eval_brier"] < before["eval_brier"] and after["eval_cross_entropy"] < before["eval_cross_entropy"]
    config = json.loads(open(f"{gaussian_reward_model['final_model']}/config.json").read())
    record = config["align_reward"]
    assert record["head"] == "gaussian" and config["id2label"] == {"0": "mu", "1": "variance_raw"}
    low, high = record["anchor_thresholds"]
    assert low < 0 < high  # the 25th / 75th percentiles of a standardised score
    assert record["score_std"] > 0


@pytest.mark.parametrize("recipe, objective, metric, steps", [
    ("reward-bt-prefs-tiny", "bradley_terry", "eval_accuracy", 30),
    ("reward-causal-feedback-tiny", "causal_rm", "eval_auc", 100),
])
def test_bradley_terry_and_causal_rm_recipes_train_end_to_end(recipe, objective, metric, steps, tmp_path):
    from align.train import run

    overrides = [f"recipe={recipe}", f"trainer.output_dir={tmp_path / 'run'}", f"trainer.max_steps={steps}",
                 "trainer.per_device_train_batch_size=16", "algorithm.data.synthetic.num_eval=200"]
    if objective == "causal_rm":  # the logging system's propensities are known: no propensity model to fit
        overrides += ["algorithm.data.propensity_column=true_propensity", "algorithm.causal.rho_01=0.2",
                      "algorithm.causal.rho_10=0.1"]
    summary = run(compose(overrides))
    assert summary["eval_after"][metric] > summary["eval_before"][metric] + 0.05
    record = json.loads(open(f"{summary['final_model']}/config.json").read())["align_reward"]
    assert record["objective"] == objective and record["head"] == "scalar"
    if objective == "causal_rm":
        assert (record["rho_01"], record["rho_10"], record["rho_estimated"]) == (0.2, 0.1, False)
        assert 0.1 <= record["propensity_min"] < record["propensity_max"] <= 0.6
        history = json.loads(open(f"{summary['run_dir']}/trainer_state.json").read())["log_history"]
        logged = [e for e in history if "causal/rho_01" in e]
        assert logged and all(e["causal/rho_01"] == 0.2 and e["causal/propensity_max"] == record["propensity_max"]
                              for e in logged)


# --- the Gaussian checkpoint ------------------------------------------------------------------------------------------


def test_gaussian_model_saved_and_reloaded_scores_identically(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    algo = algorithm(["algorithm.objective=gaussian_anchor"])
    model = load_reward_model(TINY, "gaussian_anchor")
    trainer = build_reward_model_trainer(model, tokenizer, pairs(48), pairs(16, seed=1), algo,
                                         common_args(tmp_path / "run"))
    assert isinstance(trainer, AlignRewardTrainer) and model.config.num_labels == 2  # TRL's check saw one label
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    tokenizer.save_pretrained(tmp_path / "final")

    rows = pairs(6, seed=2)
    prompts, completions = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    ids = [reward_input_ids(tokenizer, p, c) for p, c in zip(prompts, completions)]
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = torch.stack([trained(input_ids=torch.tensor([i])).logits[0].float() for i in ids])
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert reloaded.config.num_labels == 2 and reloaded.config.align_reward["anchor_thresholds"] == \
        model.config.align_reward["anchor_thresholds"]
    mu, sigma = RewardModelScorer(str(tmp_path / "final")).score(prompts, completions, batch_size=4)
    torch.testing.assert_close(mu, expected[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(sigma, torch.sqrt(torch.nn.functional.softplus(expected[:, 1]) + 1e-6), rtol=0,
                               atol=1e-5)
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert not (tmp_path / "final" / "pytorch_model.bin").exists()


def test_reward_input_ids_match_trls_tokenization_of_the_pair(tokenizer):
    from trl.data_utils import _tokenize

    row = pairs(1)[0]
    expected = _tokenize(tokenizer, row["prompt"] + [{"role": "assistant", "content": row["chosen"]}])["input_ids"]
    assert reward_input_ids(tokenizer, row["prompt"], row["chosen"]) == expected


def test_bradley_terry_loss_is_trls_reward_loss(tokenizer, tmp_path):
    from trl import RewardTrainer

    algo = algorithm(["algorithm.objective=bradley_terry"])
    trainer = build_reward_model_trainer(load_reward_model(TINY, "bradley_terry"), tokenizer, pairs(16), None, algo,
                                         common_args(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    ours = trainer.compute_loss(trainer.model, dict(batch))
    trls = RewardTrainer.compute_loss(trainer, trainer.model, {k: batch[k] for k in ("input_ids", "attention_mask")})
    torch.testing.assert_close(ours, trls)


def test_bradley_terry_loss_subtracts_the_pairs_margins(tokenizer, tmp_path):
    from align.methods.reward_model.math import bradley_terry_loss

    algo = algorithm(["algorithm.objective=bradley_terry"])
    rows = [dict(row, margin=float(i % 3)) for i, row in enumerate(pairs(16))]
    trainer = build_reward_model_trainer(load_reward_model(TINY, "bradley_terry"), tokenizer, rows, None, algo,
                                         common_args(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert batch["margin"].tolist() == [float(i % 3) for i in range(8)]
    with torch.no_grad():
        mu_w, mu_l = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0] \
            .float().chunk(2)
        loss = trainer.compute_loss(trainer.model, dict(batch))
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(mu_w - mu_l - batch["margin"]).mean())
    assert not torch.isclose(loss, bradley_terry_loss(mu_w, mu_l))  # the margin changes the loss


# --- anchors ----------------------------------------------------------------------------------------------------------


def test_anchor_thresholds_come_from_the_standardised_training_scores():
    import numpy as np

    train, held_out = pairs(200), pairs(20, seed=1)
    info = attach_anchors(train, held_out, 2, [25, 75], fraction=0.3, seed=0)
    scores = np.array([[r["score_chosen"], r["score_rejected"]] for r in train]).ravel()
    standard = (scores - scores.mean()) / scores.std()
    assert info["anchor_thresholds"] == pytest.approx(list(np.percentile(standard, [25, 75])))
    assert (info["score_mean"], info["score_std"]) == pytest.approx((scores.mean(), scores.std()))
    labels = np.array([[r["anchor_chosen"], r["anchor_rejected"]] for r in train]).ravel()
    assert [float((labels == k).mean()) for k in range(3)] == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    assert sum(r["anchor_mask"] for r in train) == 60 and all(r["anchor_mask"] for r in held_out)
    one = attach_anchors(pairs(200), [], 1, [40], fraction=1.0, seed=0)
    assert len(one["anchor_thresholds"]) == 1


def test_given_ordinal_labels_put_thresholds_where_the_classes_split_a_standard_normal():
    rows = [{"anchor_chosen": 2, "anchor_rejected": 0}, {"anchor_chosen": 1, "anchor_rejected": 1}] * 10
    info = attach_anchors(rows, [], 2, [25, 75], fraction=1.0, seed=0)
    shares = torch.tensor([0.25, 0.75], dtype=torch.float64)  # P(label < 1), P(label < 2)
    assert info["anchor_thresholds"] == pytest.approx(torch.special.ndtri(shares).tolist())
    with pytest.raises(ValueError, match="0..1"):
        attach_anchors(rows, [], 1, [50], fraction=1.0, seed=0)
    with pytest.raises(ValueError, match="constant"):
        attach_anchors([{"score_chosen": 1.0, "score_rejected": 1.0}] * 4, [], 2, [25, 75], 1.0, 0)


# --- CausalRM's auxiliary estimates -----------------------------------------------------------------------------------


def test_fit_logistic_recovers_known_coefficients_and_weights_act_as_repetition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g) * torch.tensor([1.0, 2.0, 0.5]) + 1.0
    w_true, b_true = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64), -0.3
    y = torch.bernoulli(torch.sigmoid(x.double() @ w_true + b_true), generator=g)
    coef, bias = fit_logistic(x, y, l2=0.0)
    torch.testing.assert_close(coef, w_true, atol=0.08, rtol=0)
    assert abs(bias.item() - b_true) < 0.1
    small = x[:200]
    repeated = torch.cat([small, small[:50]])
    coef_w, bias_w = fit_logistic(small, y[:200], torch.tensor([2.0] * 50 + [1.0] * 150), l2=1e-2)
    coef_r, bias_r = fit_logistic(repeated, torch.cat([y[:200], y[:50]]), l2=1e-2)
    torch.testing.assert_close(logistic_logits(small, coef_w, bias_w), logistic_logits(small, coef_r, bias_r),
                               atol=1e-5, rtol=0)


def test_roc_auc_imputation_and_soft_bce_hand_computed():
    # positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4) 1, (0.9>0.1) 1, (0.4=0.4) 0.5, (0.4>0.1) 1 -> 3.5 / 4
    assert roc_auc(torch.tensor([0.9, 0.4, 0.4, 0.1]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.875)
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))
    eta = imputed_clean_probability(torch.tensor([0.1, 0.45, 0.8, 0.95]), rho_01=0.2, rho_10=0.1)
    torch.testing.assert_close(eta, torch.tensor([0.0, 0.5, 1.0, 1.0]))  # (p - 0.1) / 0.7, clipped
    f, t = torch.tensor([0.3]), torch.tensor([0.25])
    expected = 0.25 * math.log(1 + math.exp(-0.3)) + 0.75 * math.log(1 + math.exp(0.3))
    assert soft_bce(f, t).item() == pytest.approx(expected, rel=1e-6)


def feedback_rows(tokenizer, n: int) -> list[dict]:
    rows = [{"prompt": to_messages(r["prompt"], None), "response": r["response"], "observed": r["observed"],
             "label": r["label"] or 0, "propensity": r["true_propensity"]} for r in synthetic_feedback(n, seed=0)]
    return tokenize_rows(rows, tokenizer, 512)[0]


def test_causal_rm_inputs_estimate_propensities_noise_rates_and_imputations(tokenizer):
    model = load_reward_model(TINY, "causal_rm")
    rows = [{k: v for k, v in r.items() if k != "propensity"} for r in feedback_rows(tokenizer, 300)]
    features = functools.partial(features_on_every_process, model, [r["input_ids"] for r in rows],
                                 tokenizer.pad_token_id)
    info = causal_rm_inputs(features, rows, noise_correction=True, rho=(None, None), noise_quantile=0.97,
                            propensity_weighting=True, doubly_robust=True, clip=(0.1, 1.0), l2=1e-2)
    assert info["rho_estimated"] and 0 <= info["rho_01"] and 0 <= info["rho_10"] and \
        info["rho_01"] + info["rho_10"] < 1
    observed_share = sum(r["observed"] for r in rows) / len(rows)
    assert all(0 < r["propensity"] <= 1 for r in rows) and all(0 <= r["imputed"] <= 1 for r in rows)
    # a logistic model with an intercept reproduces the base rate on its training rows
    assert sum(r["propensity"] for r in rows) / len(rows) == pytest.approx(observed_share, abs=0.01)


def test_causal_rm_given_rates_and_propensities_use_them_and_naive_keeps_observed_rows(tokenizer, tmp_path):
    rows = feedback_rows(tokenizer, 200)
    given = causal_rm_inputs(None, [dict(r) for r in rows], noise_correction=True, rho=(0.2, 0.1),
                             noise_quantile=0.97, propensity_weighting=True, doubly_robust=False, clip=(0.1, 1.0),
                             l2=1e-3)  # nothing to fit: the features are never computed
    assert (given["rho_01"], given["rho_10"], given["rho_estimated"]) == (0.2, 0.1, False)
    raw = [{"prompt": to_messages(r["prompt"], None), "response": r["response"], "observed": r["observed"],
            "label": r["label"] or 0} for r in synthetic_feedback(64, seed=0)]
    algo = algorithm(["algorithm.objective=causal_rm", "algorithm.causal.noise_correction=false",
                      "algorithm.causal.propensity_weighting=false"])
    trainer = build_reward_model_trainer(load_reward_model(TINY, "causal_rm"), tokenizer, raw, None, algo,
                                         common_args(tmp_path))
    assert len(trainer.train_dataset) == sum(r["observed"] for r in raw)
    assert trainer.rho == (0.0, 0.0) and not trainer.propensity_weighting


# --- the reward source ------------------------------------------------------------------------------------------------


def test_reward_source_quantiles_batches_and_metrics(gaussian_reward_model):
    path = gaussian_reward_model["final_model"]
    rows = pairs(10, seed=3)
    prompts, completions = [r["prompt"] for r in rows], [[{"role": "assistant", "content": r["chosen"]}] for r in rows]
    logged = {}
    mean = reward_model(prompts, completions, path=path, log_metric=logged.__setitem__)
    mu, sigma = RewardModelScorer(path).score(prompts, completions, batch_size=1)
    torch.testing.assert_close(torch.tensor(mean), mu, atol=1e-5, rtol=0)  # batch 16 == batch 1
    assert logged["reward_model/sigma_mean"] == pytest.approx(sigma.mean().item(), abs=1e-5)
    pessimistic = reward_model(prompts, completions, path=path, quantile=0.25)
    torch.testing.assert_close(torch.tensor(pessimistic), mu + torch.special.ndtri(torch.tensor(0.25)) * sigma,
                               atol=1e-5, rtol=0)
    first = reward_model(prompts, completions, path=path, quantile="random", seed=7)
    low, high = (mu + torch.special.ndtri(torch.tensor(q)) * sigma for q in (0.05, 0.95))
    assert all(lo <= r <= hi for lo, r, hi in zip(low.tolist(), first, high.tolist()))
    assert first != reward_model(prompts, completions, path=path, quantile="random", seed=7)  # a fresh q per call


def test_reward_source_refuses_quantiles_of_a_scalar_model_and_missing_checkpoints(tokenizer, tmp_path):
    model = load_reward_model(TINY, "bradley_terry")
    model.save_pretrained(tmp_path / "bt")
    tokenizer.save_pretrained(tmp_path / "bt")
    source = guard(lambda **kw: reward_model(path=str(tmp_path / "bt"), quantile=0.25, **kw), "reward_model")
    with pytest.raises(RewardError, match="scalar reward model"):
        source(prompts=["hi"], completions=["there"])
    with pytest.raises(ValueError, match="no config.json"):
        RewardModelScorer(str(tmp_path / "missing"))


def test_scorer_loads_a_full_copy_while_a_zero3_config_is_active(gaussian_reward_model):
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert is_deepspeed_zero3_enabled()
    scorer = RewardModelScorer(gaussian_reward_model["final_model"])
    assert is_deepspeed_zero3_enabled(), "the ZeRO-3 config is hidden for the load only"
    assert not any(hasattr(p, "ds_id") for p in scorer.model.parameters())  # not partitioned by zero.Init
    mu, sigma = scorer.score(["Rate it."], ["It is bold, slow and plain."])
    assert torch.isfinite(mu).all() and (sigma > 0).all()
    del zero3


def test_grpo_run_scored_by_a_trained_gaussian_reward_model(gaussian_reward_model, tiny_run):
    from align.train import run

    summary = run(compose(["algorithm=grpo", "reward=reward_model", *tiny_run, "eval.enabled=false",
                           f"reward.sources.0.kwargs.path={gaussian_reward_model['final_model']}",
                           "reward.sources.0.kwargs.quantile=random"]))
    history = json.loads(open(f"{summary['run_dir']}/trainer_state.json").read())["log_history"]
    steps = [e for e in history if "rewards/reward_model/mean" in e]
    assert [e["step"] for e in steps] == [1, 2]
    assert all(e["reward_model/sigma_mean"] > 0 for e in steps)


# --- config validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.objective=gaussian_anchor", "algorithm.data.margin_column=m"], "margin_column is a margin in the "
     "Bradley-Terry loss"),
    (["algorithm.objective=causal_rm", "algorithm.causal.rho_01=0.6", "algorithm.causal.rho_10=0.4"], "< 1"),
    (["algorithm.objective=causal_rm", "algorithm.causal.rho_01=0.1"], "both"),
    (["algorithm.objective=causal_rm", "algorithm.causal.propensity_weighting=false",
      "algorithm.causal.doubly_robust=true"], "propensity_weighting"),
    (["algorithm.objective=causal_rm", "algorithm.causal.propensity_clip=[0.0,1.0]"],
     r"propensity_clip must be in \(0, 1\]"),
    (["algorithm.objective=gaussian_anchor", "algorithm.anchors.count=3"], "choose one of: 0, 1, 2"),
    (["algorithm.objective=gaussian_anchor", "algorithm.data.source=/data/pairs.jsonl"], "score_columns"),
    (["algorithm.objective=mse"], "bradley_terry"),
    (["warm_start.max_steps=10"], "warm_start"),
    (["algorithm.data.label_column=s", "algorithm.data.votes_columns=[a,b]"], "not both"),
    (["+algorithm.trl.center_rewards_coefficient=0.1"], "duplicates"),
    (["algorithm.objective=gaussian_anchor", "algorithm.center_rewards_coefficient=0.01"], "Bradley-Terry"),
    (["algorithm.objective=gaussian_anchor", "algorithm.anchors.count=1"], "one percentile per anchor"),
    (["algorithm.objective=gaussian_anchor", "algorithm.anchors.fraction=0"], r"\(0, 1\]"),
    (["model.lora.r=8"], "LoRA"),
])
def test_reward_model_config_errors_name_the_key(overrides, message):
    from omegaconf import OmegaConf

    config = OmegaConf.to_object(compose(["algorithm=reward_model", *overrides]))
    with pytest.raises(ConfigError, match=message):
        validate(config, processes=1)
