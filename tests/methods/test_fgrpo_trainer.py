"""f-GRPO's trainer on the real tiny model: the loss TRL's training loop calls, its identities and its runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from align.data import rows_to_dataset
from align.data.synthetic import arithmetic
from align.methods.common import training_arguments
from align.methods.fgrpo.math import fpa_loss, group_token_weights
from align.methods.fgrpo.trainer import build_fgrpo_trainer, tokenize_pairs_truncated
from align.methods.grpo.trainer import build_grpo_trainer
from align.models import ensure_tiny, load_causal_lm, load_tokenizer
from tests.conftest import compose


def zero_reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


def trainer_for(algorithm: str, out, overrides=()):
    config = OmegaConf.to_object(compose([f"algorithm={algorithm}", "trainer=cpu", f"trainer.output_dir={out}",
                                          "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                                          *overrides]))
    path = str(ensure_tiny())
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    dataset = rows_to_dataset(arithmetic(16, digits=2))
    build = build_fgrpo_trainer if algorithm == "fgrpo" else build_grpo_trainer
    trainer = build(model, tokenizer, dataset, [zero_reward], [1.0], config.algorithm,
                    training_arguments(config, out, [], "test"))
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def batch(vocab: int, advantages: list[float], seed: int = 0) -> dict:
    """A left-padded prompt / right-padded completion batch as TRL's rollout hands it to the loss."""
    g = torch.Generator().manual_seed(seed)
    b = len(advantages)
    prompt_ids = torch.randint(3, vocab, (b, 6), generator=g)
    completion_ids = torch.randint(3, vocab, (b, 5), generator=g)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 3:] = 0
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.tensor(advantages),
            "num_items_in_batch": completion_mask.sum()}


def grads(trainer, inputs) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def with_reference(trainer, inputs) -> dict:
    """The batch plus reference log-probs from the policy itself: policy == reference."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with torch.no_grad():
        ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                               inputs["completion_ids"].size(1))
    return {**inputs, "ref_per_token_logps": ref}


def test_pearson_gradient_at_the_reference_is_beta_times_the_policy_gradient(tmp_path):
    """Spec identity: at policy == reference, Pearson f-GRPO's gradient equals beta x the gradient of GRPO's loss
    without clipping or KL (ratio 1, same advantages, same token-mean normalisation)."""
    beta = 0.37
    fgrpo = trainer_for("fgrpo", tmp_path / "f", ["algorithm.divergence=pearson", f"algorithm.beta={beta}"])
    grpo = trainer_for("grpo", tmp_path / "g", ["algorithm.beta=0", "algorithm.epsilon=1e9"])
    grpo.model.load_state_dict(fgrpo.model.state_dict())
    torch.manual_seed(0)
    inputs = batch(fgrpo.model.config.vocab_size, [1.2, -0.7, 0.4, -0.9])
    g_f = grads(fgrpo, with_reference(fgrpo, inputs))
    g_pg = grads(grpo, copy.deepcopy(inputs))
    assert g_f.keys() == g_pg.keys() and len(g_f) > 10
    for name in g_f:
        torch.testing.assert_close(g_f[name], beta * g_pg[name], rtol=1e-4, atol=1e-7, msg=name)
    assert max(g.abs().max().item() for g in g_f.values()) > 1e-4  # the identity is not 0 == 0


def test_group_normalization_averages_each_groups_tokens_then_the_groups(tmp_path):
    """Two groups of 2 with 8 and 10 completion tokens and a constant r, so each row's token loss is one number c_i:
    `batch` gives sum(c_i n_i) / 18, `group` the mean over groups of sum_g(c_i n_i) / T_g; they differ here and
    coincide when the groups are equally long."""
    beta, shift = 0.1, 0.5
    overrides = ["algorithm.divergence=pearson", f"algorithm.beta={beta}", "algorithm.num_generations=2"]
    by_batch = trainer_for("fgrpo", tmp_path / "b", overrides)
    by_group = trainer_for("fgrpo", tmp_path / "g", [*overrides, "algorithm.normalization=group"])
    by_group.model.load_state_dict(by_batch.model.state_dict())
    advantages = [1.2, -0.7, 0.4, -0.9]
    inputs = with_reference(by_batch, batch(by_batch.model.config.vocab_size, advantages))
    inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] - shift  # r = beta * shift on every token
    lengths = inputs["completion_mask"].sum(dim=1)
    assert lengths.tolist() == [5, 3, 5, 5]
    v = beta * shift
    per_row = [abs(a) * (-v if a > 0 else v + v * v / 4) for a in advantages]  # Pearson's two terms
    contribution = [c * n for c, n in zip(per_row, lengths.tolist())]
    with torch.no_grad():
        batch_loss = by_batch._compute_loss(by_batch.model, inputs)
        group_inputs = {**inputs, "token_weight": group_token_weights(lengths, 2)}
        group_loss = by_group._compute_loss(by_group.model, group_inputs)
    assert batch_loss.item() == pytest.approx(sum(contribution) / 18, rel=1e-4)
    expected = (sum(contribution[:2]) / 8 + sum(contribution[2:]) / 10) / 2
    assert group_loss.item() == pytest.approx(expected, rel=1e-4)
    assert abs(group_loss.item() - batch_loss.item()) > 1e-4
    equal = {**inputs, "completion_mask": torch.ones_like(inputs["completion_mask"])}
    equal["num_items_in_batch"] = equal["completion_mask"].sum()
    equal["token_weight"] = group_token_weights(equal["completion_mask"].sum(dim=1), 2)
    with torch.no_grad():
        torch.testing.assert_close(by_group._compute_loss(by_group.model, equal),
                                   by_batch._compute_loss(by_batch.model, equal))


def test_group_normalization_trains_and_attaches_weights_to_the_rollout(tiny_run):
    from align.train import run

    summary = run(compose(["algorithm=fgrpo", "algorithm.normalization=group", *tiny_run, "eval.enabled=false",
                           "trainer.max_steps=1"]))
    [entry] = [e for e in json.loads((Path(summary["run_dir"]) / "trainer_state.json").read_text())["log_history"]
               if "loss" in e]
    assert torch.isfinite(torch.tensor(entry["loss"]))


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "pearson", "hellinger", "js", "tv"])
def test_zero_advantage_completions_give_zero_loss_and_gradient(divergence, tmp_path):
    trainer = trainer_for("fgrpo", tmp_path, [f"algorithm.divergence={divergence}"])
    inputs = with_reference(trainer, batch(trainer.model.config.vocab_size, [0.0, 0.0, 0.0, 0.0]))
    inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] - 3.0  # policy far from the reference
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


def test_zero_advantage_rows_do_not_change_the_gradient(tmp_path):
    trainer = trainer_for("fgrpo", tmp_path, ["algorithm.divergence=js"])
    inputs = with_reference(trainer, batch(trainer.model.config.vocab_size, [0.8, -0.8, 0.0, 0.0]))
    full = grads(trainer, inputs)
    first_two = {k: (v[:2] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in inputs.items()}
    first_two["num_items_in_batch"] = inputs["num_items_in_batch"]  # same normaliser
    for name, g in grads(trainer, first_two).items():
        torch.testing.assert_close(full[name], g, rtol=1e-5, atol=1e-8, msg=name)


def test_beta_zero_is_refused_with_the_fix():
    from align.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"needs a reference model and beta > 0 \(e\.g\. algorithm\.beta=0\.1\)"):
        validate(OmegaConf.to_object(compose(["algorithm=fgrpo", "algorithm.beta=0"])), processes=1)


@pytest.mark.parametrize("divergence", ["pearson", "js"])
def test_short_fgrpo_run_logs_its_metrics(divergence, tiny_run):
    from align.train import run

    summary = run(compose([*tiny_run, "algorithm=fgrpo", f"algorithm.divergence={divergence}", "eval.enabled=false"]))
    history = json.loads((Path(summary["run_dir"]) / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "fgrpo/loss_positive" in e]
    assert [e["step"] for e in steps] == [1, 2]
    for key in ("fgrpo/loss_negative", "fgrpo/r_positive", "fgrpo/r_negative", "fgrpo/clamp_frac", "entropy"):
        assert all(key in e for e in steps)
    assert (Path(summary["final_model"]) / "model.safetensors").exists()


# --- f-HAL -----------------------------------------------------------------------------------------------------------

PAIRS = [{"prompt": [{"role": "user", "content": "Compute 59+63."}], "chosen": "9+3=12, carry 1; 5+6+1=12.",
          "rejected": "9+3=12; 5+6=11."}]


def fhal_trainer(out, lam: float, divergence="js"):
    config = OmegaConf.to_object(compose(["algorithm=fhal", "trainer=cpu", f"trainer.output_dir={out}",
                                          "trainer.per_device_train_batch_size=8", "algorithm.num_generations=4",
                                          f"algorithm.lam={lam}", f"algorithm.divergence={divergence}",
                                          "algorithm.pairs_per_step=2"]))
    path = str(ensure_tiny())
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    trainer = build_fgrpo_trainer(model, tokenizer, rows_to_dataset(arithmetic(16, digits=2)), [zero_reward], [1.0],
                                  config.algorithm, training_arguments(config, out, [], "test"),
                                  pairs=PAIRS * 2)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def test_fhal_lambda_one_is_fgrpo(tmp_path):
    hal = fhal_trainer(tmp_path / "h", lam=1.0)
    plain = trainer_for("fgrpo", tmp_path / "f", ["algorithm.divergence=js"])
    plain.model.load_state_dict(hal.model.state_dict())
    inputs = with_reference(hal, batch(hal.model.config.vocab_size, [0.9, -0.3, 0.0, -0.6]))
    inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] + 0.2  # away from the reference
    g_hal, g_plain = grads(hal, inputs), grads(plain, inputs)
    for name in g_plain:
        torch.testing.assert_close(g_hal[name], g_plain[name], rtol=0, atol=0, msg=name)


PAIRS_2 = [{"prompt": [{"role": "user", "content": "Compute 59+63."}], "chosen": "9+3=12, carry 1; 5+6+1=12.",
            "rejected": "9+3=12."},
           {"prompt": [{"role": "user", "content": "Compute 7+8, please."}], "chosen": "15.",
            "rejected": "7+8=14, so the answer is 14."}]


def sequence_logp(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log pi(response | prompt) by a plain unpadded forward."""
    ids = torch.tensor([prompt + response])
    logps = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return logps[torch.arange(len(targets)), targets][len(prompt) - 1:].sum()


def test_pair_log_ratios_match_unpadded_forwards_and_lambda_zero_is_the_pairs_loss(tmp_path):
    hal = fhal_trainer(tmp_path / "h", lam=0.0)
    hal.pairs, _ = tokenize_pairs_truncated(PAIRS_2, hal.processing_class, 512)
    with torch.no_grad():  # move the policy away from the reference, so r != 0
        for p in hal.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    r_w, r_l, hit = hal.pair_log_ratios(hal.model, hal.pairs)
    expected = [[hal.beta * (sequence_logp(hal.model, prompt, resp) - sequence_logp(hal.ref_model, prompt, resp))
                 for resp in (chosen, rejected)] for prompt, chosen, rejected in hal.pairs]
    torch.testing.assert_close(r_w, torch.stack([e[0] for e in expected]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r_l, torch.stack([e[1] for e in expected]), rtol=1e-4, atol=1e-5)
    assert r_w.abs().min() > 1e-3 and not hit.any()

    hal._draw_pairs = lambda training, accumulation: hal.pairs  # the same pairs for the loss
    inputs = with_reference(hal, batch(hal.model.config.vocab_size, [0.9, -0.3, 0.0, -0.6]))
    loss = hal._compute_loss(hal.model, inputs)
    torch.testing.assert_close(loss, fpa_loss(r_w, r_l, "js"))


def test_pairs_are_truncated_without_a_false_eos_and_useless_pairs_dropped():
    tokenizer = load_tokenizer(str(ensure_tiny()))
    eos = tokenizer.eos_token_id
    prompt_len = len(tokenizer.apply_chat_template(PAIRS_2[1]["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
    (kept,), dropped = tokenize_pairs_truncated(PAIRS_2[1:], tokenizer, prompt_len + 10)
    _, chosen, rejected = kept
    assert chosen[-1] == eos and len(chosen) == 4  # "15." fits: EOS kept
    assert len(rejected) == 10 and eos not in rejected  # cut: no EOS that would teach stopping mid-answer
    same = [{"prompt": PAIRS_2[1]["prompt"], "chosen": "abcdefghij-1", "rejected": "abcdefghij-2"}]
    assert tokenize_pairs_truncated(same, tokenizer, prompt_len + 10) == ([], 1)  # identical once cut
    assert tokenize_pairs_truncated(PAIRS_2[1:], tokenizer, prompt_len + 4) == ([], 1)  # no room left for responses


def test_pair_draws_depend_only_on_seed_rank_step_and_micro_batch(tmp_path):
    hal = fhal_trainer(tmp_path / "h", lam=0.5)
    hal.pairs = [(i,) for i in range(1000)]  # stand-ins: only which ones are drawn matters here
    first = [hal._draw_pairs(True, 1) for _ in range(2)]  # step 0, micro-batches 0 and 1
    hal._draws = (None, 0)  # a fresh (resumed) trainer at the same step draws the same
    assert [hal._draw_pairs(True, 1) for _ in range(2)] == first and first[0] != first[1]
    hal.state.global_step = 1
    assert hal._draw_pairs(True, 1) != first[0]


def test_short_fhal_run_logs_both_components(tiny_run):
    from align.train import run

    summary = run(compose([*tiny_run, "algorithm=fhal", "algorithm.pairs_per_step=4",
                           "algorithm.pairs.num_synthetic=64", "eval.enabled=false"]))
    history = json.loads((Path(summary["run_dir"]) / "trainer_state.json").read_text())["log_history"]
    steps = [e for e in history if "fhal/pairs_loss" in e]
    assert [e["step"] for e in steps] == [1, 2]
    assert all("fhal/on_policy_loss" in e and "fhal/pair_accuracy" in e and "fgrpo/r_negative" in e for e in steps)
