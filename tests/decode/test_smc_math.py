"""The SMC math (align.decode.smc) on hand-made weights and distributions: ESS, resampling, the temperature
increment and its special cases, MH acceptance and the selection rules. Imports no TRL."""

from __future__ import annotations

import math

import pytest
import torch

from align.decode import smc


def test_ess_is_n_for_equal_weights_one_for_one_hot_and_scale_invariant():
    n = 6
    assert smc.ess(torch.zeros(n)).item() == pytest.approx(n)
    one_hot = torch.full((n,), -math.inf)
    one_hot[2] = 0.0
    assert smc.ess(one_hot).item() == pytest.approx(1.0)
    logw = torch.tensor([0.3, -1.2, 2.0, 0.0, -5.0, 1.1], dtype=torch.float64)
    assert smc.ess(logw + 123.0).item() == pytest.approx(smc.ess(logw).item())
    w = logw.exp()
    assert smc.ess(logw).item() == pytest.approx((w.sum() ** 2 / (w ** 2).sum()).item())  # log form = direct form


def test_systematic_counts_are_floor_or_ceil_of_n_w_and_both_schemes_are_unbiased():
    weights = torch.tensor([0.05, 0.4, 0.15, 0.3, 0.1], dtype=torch.float64)
    logw, n = weights.log(), 5
    generator = torch.Generator().manual_seed(0)
    totals = {"systematic": torch.zeros(n, dtype=torch.float64), "multinomial": torch.zeros(n, dtype=torch.float64)}
    draws = 4000
    for _ in range(draws):
        for scheme in totals:
            counts = torch.bincount(smc.resample(logw, scheme, generator), minlength=n).double()
            totals[scheme] += counts
            if scheme == "systematic":
                assert ((counts >= torch.floor(n * weights)) & (counts <= torch.ceil(n * weights))).all()
    for scheme, total in totals.items():
        assert torch.allclose(total / draws, n * weights, atol=0.05), scheme


def test_temperature_increment_matches_alpha_log_p_minus_log_q_and_is_log_z_alpha_at_tau_one_over_alpha():
    logp = torch.log_softmax(torch.tensor([[1.0, -0.5, 0.2, 2.0]], dtype=torch.float64), -1)
    alpha, tau = 2.5, 0.7
    logq = torch.log_softmax(logp / tau, -1)
    for token in range(4):
        direct = alpha * logp[0, token] - logq[0, token]
        assert smc.temperature_increment(logp, logp[:, token], alpha, tau).item() == pytest.approx(direct.item())
    increments = [smc.temperature_increment(logp, logp[:, t], alpha, 1 / alpha).item() for t in range(4)]
    assert increments == pytest.approx([smc.log_partition(logp, alpha).item()] * 4)  # whatever token was drawn


def test_the_temperature_twist_makes_every_increment_zero():
    """alpha = 1/tau, B = 1, log Psi = -sum log Z_alpha: the block weight vanishes (identity 3)."""
    logp = torch.log_softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    alpha = 3.0
    logq = torch.log_softmax(alpha * logp, -1)
    tokens = torch.tensor([0, 3, 1, 2, 2])
    picked_p, picked_q = logp.gather(1, tokens[:, None])[:, 0], logq.gather(1, tokens[:, None])[:, 0]
    psi_change = -smc.log_partition(logp, alpha)
    increment = alpha * picked_p - picked_q + psi_change
    assert torch.allclose(increment, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert smc.block_increment(picked_p, picked_q, alpha).item() == pytest.approx(-psi_change.sum().item())


def test_mh_acceptance_combines_the_target_and_the_proposal_ratios():
    new_p, old_p = torch.tensor([-0.5, -1.0]), torch.tensor([-2.0, -0.1])
    new_q, old_q = torch.tensor([-0.4, -0.9]), torch.tensor([-1.5, -0.3])
    value = 2 * (-1.5 + 2.1) - (-1.3 + 1.8) + 0.2 - 0.7
    assert smc.mh_log_accept(new_p, new_q, old_p, old_q, 0.2, 0.7, alpha=2.0) == pytest.approx(min(0.0, value))
    assert smc.mh_log_accept(old_p, old_q, new_p, new_q, 0.7, 0.2, alpha=2.0) == pytest.approx(min(0.0, -value))


def test_selection_rules():
    logw = torch.log(torch.tensor([0.3, 0.1, 0.25, 0.35], dtype=torch.float64))
    sequences = [(1, 2), (3,), (1, 2), (4,)]
    answers = ["7", "8", "7", "8"]
    rewards = [0.1, 0.9, None, 0.5]
    assert smc.select("argmax_weight", logw, sequences, answers, rewards) == 0  # (1, 2) merges to 0.55
    assert smc.select("vote", logw, sequences, ["7", "8", "8", "8"], rewards) == 1  # "8": 0.7
    assert smc.select("argmax_reward", logw, sequences, answers, rewards) == 1
    keys, merged = smc.merge(sequences, logw)
    assert keys == [(1, 2), (3,), (4,)] and torch.allclose(merged.exp(), torch.tensor([0.55, 0.1, 0.35],
                                                                                       dtype=torch.float64))
    picks = [smc.select("sample", logw, sequences, answers, rewards, torch.Generator().manual_seed(s))
             for s in range(2000)]
    assert picks.count(1) / 2000 == pytest.approx(0.1, abs=0.03) and 2 not in picks  # a merged group's first
    with pytest.raises(ValueError, match="unknown selection"):
        smc.select("best", logw, sequences, answers, rewards)


def test_the_calibrated_potential_is_a_sigmoid_of_the_standardised_reward():
    from align.decode.methods import calibrated

    potential = calibrated(lambda prompts, completions, **columns: [1.0, 3.0, None, -1.0], mu=1.0, sigma=2.0)
    values = potential(prompts=[None] * 4, completions=["a", "b", "c", "d"])
    assert values[0] == 0.5 and values[2] is None
    assert values[1] == pytest.approx(0.7310585786300049) and values[3] == pytest.approx(1 - 0.7310585786300049)
    far = calibrated(lambda prompts, completions, **columns: [-1e6, 1e6], mu=0.0, sigma=1e-3)
    assert far(prompts=[None] * 2, completions=["a", "b"]) == [0.0, 1.0]  # no overflow
