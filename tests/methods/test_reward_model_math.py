"""Reward models' pure math: Bradley-Terry, the Gaussian preference and anchor losses, thresholds, labels and masks,
CausalRM's noise-aware, IPS and doubly robust losses, noise-rate estimation and the metrics. Hand-computed
expectations (math modules); no model, no TRL. The Gaussian head's variance and quantile rewards: tests/rewards."""

import math

import pytest
import torch
import torch.nn.functional as F

from align.methods.reward_model.causal import estimate_noise_rates
from align.methods.reward_model.math import (
    anchor_loss,
    anchor_mask,
    anchor_nll,
    anchor_thresholds,
    bradley_terry_loss,
    brier_score,
    doubly_robust_loss,
    gaussian_anchor_loss,
    gaussian_preference_loss,
    gaussian_preference_nll,
    ips_loss,
    noise_aware_bce,
    ordinal_labels,
    pairwise_accuracy,
    preference_probability,
    preference_z,
    soft_cross_entropy,
)

D64 = torch.float64


def t(values, dtype=D64):
    return torch.tensor(values, dtype=dtype)


# --- Bradley-Terry ---------------------------------------------------------------------------------------------------


def test_bradley_terry_hand_computed_with_and_without_margin():
    r_w, r_l = t([1.0, 0.0, 2.0]), t([0.0, 0.5, -1.0])
    # log(1 + exp(-d)) for d = 1, -0.5, 3
    assert bradley_terry_loss(r_w, r_l).item() == pytest.approx(0.44530867442402383, rel=1e-12)
    # d = 0.5, -1, 2.5
    assert bradley_terry_loss(r_w, r_l, margin=0.5).item() == pytest.approx(0.622076135330293, rel=1e-12)
    # d = 1, -1.5, 2.5
    assert bradley_terry_loss(r_w, r_l, margin=t([0.0, 1.0, 0.5])).item() == pytest.approx(0.697854899931175,
                                                                                          rel=1e-12)
    loss = bradley_terry_loss(r_w.float(), r_l.float())
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.44530867442402383, rel=1e-6)


def test_bradley_terry_upcasts_bfloat16_and_checks_shapes():
    loss = bradley_terry_loss(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([0.0], dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.31326168751822286, rel=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bradley_terry_loss(torch.zeros(0), torch.zeros(0))


# --- Gaussian preference loss ----------------------------------------------------------------------------------------


def test_gaussian_preference_hand_computed():
    mu_w, var_w, mu_l, var_l = t([1.0, 0.0]), t([0.5, 1.0]), t([0.0, 1.0]), t([1.5, 3.0])
    s = t([1.0, 0.75])
    # z = 1 / sqrt(2) and -1 / 2
    assert preference_z(mu_w, var_w, mu_l, var_l).tolist() == pytest.approx([1 / math.sqrt(2), -0.5], rel=1e-12)
    nll = gaussian_preference_nll(mu_w, var_w, mu_l, var_l, s)
    # -log Phi(0.7071) and -(0.75 log Phi(-0.5) + 0.25 log Phi(0.5))
    assert nll.tolist() == pytest.approx([0.2741080327843857, 0.9741704250173782], rel=1e-12)
    assert gaussian_preference_loss(mu_w, var_w, mu_l, var_l, s).item() == pytest.approx(0.6241392289008819,
                                                                                         rel=1e-12)
    prob = preference_probability(mu_w, var_w, mu_l, var_l)
    assert prob.tolist() == pytest.approx([0.7602499389065233, 0.3085375387259869], rel=1e-12)
    loss32 = gaussian_preference_loss(mu_w.bfloat16(), var_w.bfloat16(), mu_l.bfloat16(), var_l.bfloat16(), 1.0)
    assert loss32.dtype == torch.float32 and torch.isfinite(loss32)


def test_gaussian_preference_gradient_at_zero():
    # d/dmu_w of -log Phi(z) at z = 0 with var_w + var_l = 2: -(phi(0) / Phi(0)) / sqrt(2) = -1 / sqrt(pi)
    mu_w = torch.zeros(1, dtype=D64, requires_grad=True)
    loss = gaussian_preference_loss(mu_w, t([1.0]), t([0.0]), t([1.0]), 1.0)
    (grad,) = torch.autograd.grad(loss, mu_w)
    assert grad.item() == pytest.approx(-0.5641895835477563, rel=1e-12)


def test_gaussian_preference_clamps_z_at_six():
    mu_w = t([10.0]).requires_grad_()
    loss = gaussian_preference_loss(mu_w, t([0.5]), t([0.0]), t([0.5]), 0.8)
    # z = 10 clamped to 6: -(0.8 log Phi(6) + 0.2 log Phi(-6))
    assert loss.item() == pytest.approx(4.14735379078421, rel=1e-9)
    (grad,) = torch.autograd.grad(loss, mu_w)
    assert grad.item() == 0.0
    assert preference_probability(t([10.0]), t([0.5]), t([-10.0]), t([0.5])).item() == pytest.approx(
        0.5 * math.erfc(-6 / math.sqrt(2)), rel=1e-12)
    big = gaussian_preference_loss(torch.tensor([1e4]), torch.tensor([1e-6]), torch.tensor([-1e4]),
                                   torch.tensor([1e-6]), torch.tensor([0.0]))
    assert torch.isfinite(big)


def test_gaussian_preference_checks_soft_labels():
    with pytest.raises(ValueError, match=r"Soft labels must lie in \[0, 1\]"):
        gaussian_preference_loss(t([1.0]), t([1.0]), t([0.0]), t([1.0]), 1.2)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_preference_loss(t([1.0, 2.0]), t([1.0]), t([0.0]), t([1.0]), 1.0)


def test_equal_fixed_variances_make_a_monotone_reparametrization_of_probit_bradley_terry():
    v = 0.7
    margins = torch.linspace(-5, 5, 201, dtype=D64)  # |z| <= 5 / sqrt(1.4) < 6: no clamp
    var = torch.full_like(margins, v)
    nll = gaussian_preference_nll(margins, var, torch.zeros_like(margins), var, 1.0)
    torch.testing.assert_close(nll, -torch.special.log_ndtr(margins / math.sqrt(2 * v)), rtol=1e-12, atol=1e-12)
    assert (nll.diff() < 0).all()  # strictly decreasing in the margin
    # the ordering of pairs by loss is the ordering by the probit BT loss -log Phi(margin) (and the logistic one)
    shuffled = margins[torch.randperm(201, generator=torch.Generator().manual_seed(0))]
    var = torch.full_like(shuffled, v)
    by_gaussian = torch.argsort(gaussian_preference_nll(shuffled, var, torch.zeros_like(shuffled), var, 1.0))
    assert torch.equal(by_gaussian, torch.argsort(-torch.special.log_ndtr(shuffled)))
    assert torch.equal(by_gaussian, torch.argsort(-F.logsigmoid(shuffled)))


# --- anchors: thresholds, labels, ordinal probit ---------------------------------------------------------------------


def test_anchor_thresholds_at_percentiles_of_a_known_vector():
    scores = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]  # sorted 1 1 2 3 4 5 6 9; positions 1.75 and 5.25
    assert anchor_thresholds(scores) == pytest.approx((1.75, 5.25), rel=1e-12)
    assert anchor_thresholds(torch.tensor(scores)) == pytest.approx((1.75, 5.25), rel=1e-6)
    assert anchor_thresholds(scores, percentiles=50) == pytest.approx((3.5,))
    assert anchor_thresholds(scores, percentiles=(50,)) == pytest.approx((3.5,))
    assert anchor_thresholds(scores + [float("nan")], (0, 100)) == (1.0, 9.0)  # NaN = missing, ignored


def test_anchor_thresholds_refuse_bad_input():
    with pytest.raises(ValueError, match="coincide"):
        anchor_thresholds([1.0, 1.0, 1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="increasing percentiles"):
        anchor_thresholds([1.0, 2.0], (75, 25))
    with pytest.raises(ValueError, match="increasing percentiles"):
        anchor_thresholds([1.0, 2.0], (10, 50, 90))
    with pytest.raises(ValueError, match="No scores"):
        anchor_thresholds([float("nan")])
    with pytest.raises(ValueError, match="finite"):
        anchor_thresholds([1.0, float("inf")])


def test_ordinal_labels_count_thresholds_reached():
    scores = t([0.5, 1.75, 3.0, 5.25, 9.0])
    labels = ordinal_labels(scores, (1.75, 5.25))
    assert labels.dtype == torch.long and labels.tolist() == [0, 1, 1, 2, 2]  # on the threshold = upper class
    assert ordinal_labels(scores, (3.0,)).tolist() == [0, 0, 1, 1, 1]
    assert ordinal_labels([0.0, 2.0], [1.0]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="strictly increasing"):
        ordinal_labels(scores, (2.0, 2.0))
    with pytest.raises(ValueError, match="finite"):
        ordinal_labels(t([float("nan")]), (0.0,))


# per response: (mu, var, label) with thresholds (-1, 1)
#   (0, 1, mid):   pi_1 = Phi(1) - Phi(-1)      (0, 4, low):  pi_0 = Phi(-0.5)
#   (2, 1, high):  pi_2 = Phi(1)                (-0.5, 0.25, low): pi_0 = Phi(-1)
ANCHOR_NLL = [0.38171514630212616, 1.1759117615936188, 0.1727537790234499, 1.8410216450092634]


def test_anchor_loss_two_thresholds_hand_computed():
    mu, var, labels = t([0.0, 0.0, 2.0, -0.5]), t([1.0, 4.0, 1.0, 0.25]), torch.tensor([1, 0, 2, 0])
    assert anchor_nll(mu, var, labels, (-1.0, 1.0)).tolist() == pytest.approx(ANCHOR_NLL, rel=1e-12)
    assert anchor_loss(mu, var, labels, (-1.0, 1.0)).item() == pytest.approx(0.8928505829821145, rel=1e-12)
    loss32 = anchor_loss(mu.bfloat16(), var.bfloat16(), labels, (-1.0, 1.0))
    assert loss32.dtype == torch.float32 and loss32.item() == pytest.approx(0.8928505829821145, rel=1e-5)


def test_anchor_loss_one_threshold_is_the_binary_probit():
    mu, var = t([1.5, 0.0]), t([1.0, 0.25])  # u = (mu - 0.5) / sigma = 1, -1
    assert anchor_nll(mu, var, torch.tensor([1, 1]), (0.5,)).tolist() == pytest.approx(
        [0.1727537790234499, 1.8410216450092634], rel=1e-12)  # -log Phi(1), -log Phi(-1)
    assert anchor_nll(mu, var, torch.tensor([1, 0]), (0.5,))[1].item() == pytest.approx(0.1727537790234499,
                                                                                        rel=1e-12)
    assert anchor_loss(mu, var, torch.tensor([1, 1]), [0.5]).item() == pytest.approx(1.0068877120163566, rel=1e-12)


def test_anchor_probabilities_are_floored_and_the_middle_class_is_accurate_in_the_tail():
    mu = t([10.0]).requires_grad_()
    nll = anchor_nll(mu, t([1.0]), torch.tensor([0]), (-1.0, 1.0))  # pi_0 = Phi(-11) ~ 2e-28 -> 1e-7
    assert nll.item() == pytest.approx(16.11809565095832, rel=1e-12)
    (grad,) = torch.autograd.grad(nll.sum(), mu)
    assert grad.item() == 0.0
    # pi_1 = Phi(-4.5) - Phi(-5) = 3.11e-6: float32 1 - Phi tail differences would be off by percents
    nll32 = anchor_nll(torch.tensor([5.0]), torch.tensor([1.0]), torch.tensor([1]), (0.0, 0.5))
    assert nll32.item() == pytest.approx(12.680559412123282, rel=1e-5)
    mirror = anchor_nll(torch.tensor([-5.0]), torch.tensor([1.0]), torch.tensor([1]), (-0.5, 0.0))  # lower tail
    assert mirror.item() == pytest.approx(12.680559412123282, rel=1e-5)
    assert anchor_nll(t([5.0]), t([1.0]), torch.tensor([1]), (0.0, 0.5)).item() == pytest.approx(12.680559412123282,
                                                                                                rel=1e-10)


def test_anchor_loss_checks_labels_and_thresholds():
    mu, var = t([0.0, 1.0]), t([1.0, 1.0])
    with pytest.raises(ValueError, match=r"integers in 0 \.\. 2"):
        anchor_loss(mu, var, torch.tensor([0, 3]), (-1.0, 1.0))
    with pytest.raises(ValueError, match=r"integers in 0 \.\. 1"):
        anchor_loss(mu, var, torch.tensor([0, 2]), (0.0,))
    with pytest.raises(ValueError, match="integers"):
        anchor_loss(mu, var, t([0.0, 1.0]), (0.0,))
    with pytest.raises(ValueError, match="strictly increasing"):
        anchor_loss(mu, var, torch.tensor([0, 1]), (1.0, -1.0))
    with pytest.raises(ValueError, match="strictly increasing"):
        anchor_loss(mu, var, torch.tensor([0, 1]), (-1.0, 0.0, 1.0))


def test_two_anchors_identify_mu_and_sigma():
    mu, sigma, tau_1, tau_2 = 0.3, 0.8, -0.5, 1.2
    p_1 = torch.special.ndtr(t([(mu - tau_1) / sigma]))
    p_2 = torch.special.ndtr(t([(mu - tau_2) / sigma]))
    gap = torch.special.ndtri(p_1) - torch.special.ndtri(p_2)
    assert gap.item() == pytest.approx((tau_2 - tau_1) / sigma, rel=1e-10)  # 2.125
    assert gap.item() == pytest.approx(2.125, rel=1e-10)
    sigma_hat = (tau_2 - tau_1) / gap.item()  # p_1, p_2 pin sigma, then p_1 pins mu
    assert sigma_hat == pytest.approx(sigma, rel=1e-10)
    assert tau_1 + sigma_hat * torch.special.ndtri(p_1).item() == pytest.approx(mu, rel=1e-10)
    # and the pairwise likelihood alone cannot: shifting mu and scaling (mu, sigma) leave z unchanged
    z = preference_z(t([1.0]), t([0.5]), t([0.2]), t([1.5]))
    assert preference_z(t([1.0 + 7]), t([0.5]), t([0.2 + 7]), t([1.5])).item() == pytest.approx(z.item())
    assert preference_z(t([3.0]), t([4.5]), t([0.6]), t([13.5])).item() == pytest.approx(z.item())


# --- anchors on a fraction of pairs ----------------------------------------------------------------------------------


def test_anchor_mask_fraction_reproducibility_and_edges():
    mask = anchor_mask(1000, 0.3, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (1000,) and mask.sum().item() == 300
    assert torch.equal(mask, anchor_mask(1000, 0.3, torch.Generator().manual_seed(1)))
    assert not torch.equal(mask, anchor_mask(1000, 0.3, torch.Generator().manual_seed(2)))
    assert anchor_mask(10, 0.25, torch.Generator().manual_seed(0)).sum().item() == 3  # 2.5 rounds half up
    assert not anchor_mask(50, 0.0).any()
    assert anchor_mask(50, 1.0).all()
    assert anchor_mask(0, 0.5).shape == (0,)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        anchor_mask(10, 1.5)
    with pytest.raises(ValueError, match="num_pairs >= 0"):
        anchor_mask(-1, 0.5)


# pairs: w = responses 1, 2 of ANCHOR_NLL, l = responses 3, 4; thresholds (-1, 1); s = 1
# z = -2 / sqrt(2) and 0.5 / sqrt(4.25); L_pref = mean of -log Phi(z)
GA = dict(mu_w=t([0.0, 0.0]), var_w=t([1.0, 4.0]), mu_l=t([2.0, -0.5]), var_l=t([1.0, 0.25]), soft_label=1.0,
          labels_w=torch.tensor([1, 0]), labels_l=torch.tensor([2, 0]), thresholds=(-1.0, 1.0))
GA_PREF = 1.5302868440978834
GA_PAIR = [ANCHOR_NLL[0] + ANCHOR_NLL[2], ANCHOR_NLL[1] + ANCHOR_NLL[3]]  # 0.5544689253255761, 3.016933406602882


def test_gaussian_anchor_loss_hand_computed():
    total, pref, anchor = gaussian_anchor_loss(**GA)
    assert pref.item() == pytest.approx(GA_PREF, rel=1e-12)
    assert anchor.item() == pytest.approx(sum(GA_PAIR) / 2, rel=1e-12)
    assert total.item() == pytest.approx(1.7088569606943063, rel=1e-12)  # lam = 0.1 by default
    total, _, anchor = gaussian_anchor_loss(**GA, lam=0.5, mask=torch.tensor([False, True]))
    assert anchor.item() == pytest.approx(3.016933406602882, rel=1e-12)  # mean over the masked pair only
    assert total.item() == pytest.approx(GA_PREF + 0.5 * 3.016933406602882, rel=1e-12)
    total, pref, anchor = gaussian_anchor_loss(**GA, mask=torch.tensor([False, False]))
    assert anchor.item() == 0.0 and total.item() == pref.item()
    # with the training set's anchored fraction f: the masked pairs' sum / (f * P)
    _, _, anchor = gaussian_anchor_loss(**GA, mask=torch.tensor([False, True]), fraction=0.25)
    assert anchor.item() == pytest.approx(GA_PAIR[1] / (0.25 * 2), rel=1e-12)
    _, _, anchor = gaussian_anchor_loss(**GA, mask=torch.tensor([True, True]), fraction=1.0)
    assert anchor.item() == pytest.approx(sum(GA_PAIR) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="fraction"):
        gaussian_anchor_loss(**GA, fraction=0.0)
    total, pref, anchor = gaussian_anchor_loss(**{k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point()
                                                  else v for k, v in GA.items()})
    assert total.dtype == pref.dtype == anchor.dtype == torch.float32


def test_anchor_term_with_the_fraction_is_unbiased_for_the_mean_over_anchored_pairs():
    # Every subset of 1 of 2 pairs equally likely (fraction 0.5): E[anchor term] = the mean of the pairs' terms, and
    # each anchored pair's weight is the same (1 / (f P)) whatever its batch holds.
    terms = [gaussian_anchor_loss(**GA, mask=torch.tensor(m), fraction=0.5)[2].item()
             for m in ([True, False], [False, True])]
    assert sum(terms) / 2 == pytest.approx(sum(GA_PAIR) / 2, rel=1e-12)


def test_gaussian_anchor_loss_unmasked_pairs_get_no_anchor_gradient():
    mu_l = GA["mu_l"].clone().requires_grad_()
    mask = torch.tensor([False, True])
    total, pref, _ = gaussian_anchor_loss(**{**GA, "mu_l": mu_l}, mask=mask)
    (grad,) = torch.autograd.grad(total, mu_l)
    (pref_grad,) = torch.autograd.grad(gaussian_preference_loss(GA["mu_w"], GA["var_w"], mu_l, GA["var_l"], 1.0),
                                       mu_l)
    assert grad[0].item() == pytest.approx(pref_grad[0].item(), rel=1e-12)  # pair 0: preference gradient only
    assert grad[1].item() != pytest.approx(pref_grad[1].item())
    with pytest.raises(ValueError, match="same shape"):
        gaussian_anchor_loss(**GA, mask=torch.tensor([True]))


# --- CausalRM: noise-aware loss --------------------------------------------------------------------------------------


def test_noise_aware_bce_hand_computed():
    logits, labels = t([0.0, 2.0, 5.0]), torch.tensor([1, 0, 1])
    loss = noise_aware_bce(logits, labels, rho_01=0.2, rho_10=0.1)
    # row 1: l(0, 1) = l(0, 0) = log 2, so (0.9 - 0.2) log 2 / 0.7 = log 2
    # row 2: (0.8 softplus(2) - 0.1 softplus(-2)) / 0.7;  row 3: (0.9 softplus(-5) - 0.2 softplus(5)) / 0.7 < 0
    assert loss.tolist() == pytest.approx([math.log(2), 2.4126422967572587, -1.4218560800823106], rel=1e-12)
    assert loss.shape == (3,)
    assert noise_aware_bce(logits.bfloat16(), labels.bool(), 0.2, 0.1).dtype == torch.float32


def test_noise_aware_bce_without_noise_is_plain_bce():
    logits = torch.randn(64, dtype=D64, generator=torch.Generator().manual_seed(0)) * 3
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise_aware_bce(logits, labels, 0.0, 0.0),
                               F.binary_cross_entropy_with_logits(logits, labels.double(), reduction="none"),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rho_01, rho_10", [(0.2, 0.1), (0.0, 0.35), (0.45, 0.45), (0.6, 0.05)])
def test_noise_aware_bce_is_unbiased_exactly(rho_01, rho_10):
    f = torch.randn(200, dtype=D64, generator=torch.Generator().manual_seed(4)) * 4
    y = torch.randint(0, 2, (200,), generator=torch.Generator().manual_seed(5))
    as_1 = noise_aware_bce(f, torch.ones_like(y), rho_01, rho_10)
    as_0 = noise_aware_bce(f, torch.zeros_like(y), rho_01, rho_10)
    # the two-point expectation over the flips: y = 1 stays 1 w.p. 1 - rho_01; y = 0 becomes 1 w.p. rho_10
    p_noisy_1 = torch.where(y == 1, t(1 - rho_01), t(rho_10))
    expected_loss = p_noisy_1 * as_1 + (1 - p_noisy_1) * as_0
    clean = F.binary_cross_entropy_with_logits(f, y.double(), reduction="none")
    torch.testing.assert_close(expected_loss, clean, rtol=1e-10, atol=1e-10)


def test_noise_aware_bce_is_unbiased_by_monte_carlo():
    rho_01, rho_10, draws = 0.2, 0.1, 20000
    gen = torch.Generator().manual_seed(6)
    f = torch.randn(8, dtype=D64, generator=gen) * 2
    y = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0])
    flip = torch.rand(draws, 8, dtype=D64, generator=gen) < torch.where(y == 1, rho_01, rho_10).double()
    noisy = torch.where(flip, 1 - y, y)  # (draws, 8)
    losses = noise_aware_bce(f.repeat(draws), noisy.flatten(), rho_01, rho_10).view(draws, 8)
    clean = F.binary_cross_entropy_with_logits(f, y.double(), reduction="none")
    torch.testing.assert_close(losses.mean(0), clean, rtol=0.0, atol=0.08)
    # whereas the naive BCE on the noisy labels is biased
    naive = F.binary_cross_entropy_with_logits(f.repeat(draws, 1), noisy.double(), reduction="none").mean(0)
    assert (naive - clean).abs().max().item() > 0.15


def test_noise_aware_bce_refuses_bad_rates_and_labels():
    f, y = t([0.0, 1.0]), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="rho_01 \\+ rho_10 < 1"):
        noise_aware_bce(f, y, 0.6, 0.4)
    with pytest.raises(ValueError, match="rho_01 \\+ rho_10 < 1"):
        noise_aware_bce(f, y, 0.7, 0.5)
    with pytest.raises(ValueError, match=r"rho_01 must lie in \[0, 1\)"):
        noise_aware_bce(f, y, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"rho_10 must lie in \[0, 1\)"):
        noise_aware_bce(f, y, 0.1, -0.1)
    with pytest.raises(ValueError, match="Noisy labels must be 0 / 1"):
        noise_aware_bce(f, torch.tensor([0, 2]), 0.1, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        noise_aware_bce(f, torch.tensor([0, 1, 1]), 0.1, 0.1)


# --- CausalRM: IPS and doubly robust ---------------------------------------------------------------------------------

ROWS = dict(per_row_loss=t([1.0, 2.0, 3.0, 4.0]), observed=torch.tensor([1, 0, 1, 1]),
            propensity=t([0.5, 0.3, 0.05, 1.0]))


def test_ips_loss_hand_computed_with_clipping():
    # (1 / 0.5 + 0 + 3 / clip(0.05) + 4 / 1) / 4 with clip 0.1: (2 + 30 + 4) / 4
    assert ips_loss(**ROWS).item() == pytest.approx(9.0, rel=1e-12)
    assert ips_loss(**ROWS, clip=(0.01, 1.0)).item() == pytest.approx(16.5, rel=1e-12)  # (2 + 60 + 4) / 4
    assert ips_loss(**ROWS, clip=(0.1, 0.5)).item() == pytest.approx(10.0, rel=1e-12)  # (2 + 30 + 8) / 4
    # an unobserved row's value does not matter, not even NaN
    nan_row = {**ROWS, "per_row_loss": t([1.0, float("nan"), 3.0, 4.0])}
    assert ips_loss(**nan_row).item() == pytest.approx(9.0, rel=1e-12)
    assert ips_loss(**{**ROWS, "observed": ROWS["observed"].bool()}).item() == pytest.approx(9.0, rel=1e-12)
    assert ips_loss(**{k: v.bfloat16() if v.is_floating_point() else v for k, v in ROWS.items()}).dtype == \
        torch.float32


def test_ips_without_noise_or_selection_is_plain_mean_bce():
    logits = torch.randn(50, dtype=D64, generator=torch.Generator().manual_seed(7)) * 2
    labels = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(8))
    per_row = noise_aware_bce(logits, labels, 0.0, 0.0)
    ips = ips_loss(per_row, torch.ones(50, dtype=torch.long), torch.ones(50, dtype=D64))
    plain = (labels * F.softplus(-logits) + (1 - labels) * F.softplus(logits)).mean()
    assert ips.item() == plain.item()  # exactly
    torch.testing.assert_close(ips, F.binary_cross_entropy_with_logits(logits, labels.double()), rtol=1e-12,
                               atol=1e-12)


def test_doubly_robust_hand_computed_and_its_limits():
    imputed = t([0.5, 1.5, 1.0, 2.0])
    # 0.5 + 0.5 / 0.5, 1.5, 1 + 2 / 0.1, 2 + 2 / 1  ->  (1.5 + 1.5 + 21 + 4) / 4
    assert doubly_robust_loss(imputed_loss=imputed, **ROWS).item() == pytest.approx(7.0, rel=1e-12)
    loss = t([0.3, 1.7, 2.2, 0.9])
    ones = torch.ones(4, dtype=torch.long)
    # propensity 1 and every row observed: DR = IPS = mean loss, whatever the imputation
    dr = doubly_robust_loss(loss, imputed, ones, torch.ones(4, dtype=D64))
    assert dr.item() == pytest.approx(ips_loss(loss, ones, torch.ones(4, dtype=D64)).item(), rel=1e-12)
    assert dr.item() == pytest.approx(1.275, rel=1e-12)
    # nothing observed: DR = mean of the imputed loss (IPS would be 0)
    zeros = torch.zeros(4, dtype=torch.long)
    assert doubly_robust_loss(loss, imputed, zeros, ROWS["propensity"]).item() == pytest.approx(1.25, rel=1e-12)
    assert ips_loss(loss, zeros, ROWS["propensity"]).item() == 0.0


def test_propensity_and_observed_are_checked_before_clipping():
    for bad in (0.0, 1.2, -0.3):
        rows = {**ROWS, "propensity": t([0.5, bad, 0.5, 0.5])}
        with pytest.raises(ValueError, match=r"Propensities must be probabilities in \(0, 1\].*not the logits"):
            ips_loss(**rows)
        with pytest.raises(ValueError, match=r"Propensities must be probabilities in \(0, 1\]"):
            doubly_robust_loss(imputed_loss=t([0.0] * 4), **rows)
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        ips_loss(**ROWS, clip=(0.0, 1.0))
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        ips_loss(**ROWS, clip=(0.5, 1.5))
    with pytest.raises(ValueError, match="observed must be 0 / 1"):
        ips_loss(**{**ROWS, "observed": torch.tensor([1, 0, 2, 1])})
    with pytest.raises(ValueError, match="same shape"):
        doubly_robust_loss(imputed_loss=t([0.0] * 3), **ROWS)


# --- CausalRM: noise-rate estimation ---------------------------------------------------------------------------------


def test_estimate_noise_rates_hand_computed():
    logits = [-2.0 + 0.06 * i for i in range(101)]  # 3% / 97% quantiles at positions 3 and 97: -1.82 and 3.82
    rho_01, rho_10 = estimate_noise_rates(logits)
    assert rho_10 == pytest.approx(0.13943387296165005, rel=1e-9)  # sigmoid(-1.82)
    assert rho_01 == pytest.approx(0.021457289717603523, rel=1e-9)  # 1 - sigmoid(3.82)
    assert estimate_noise_rates(torch.tensor(logits)) == pytest.approx((rho_01, rho_10), rel=1e-5)


def test_estimate_noise_rates_recovers_the_rates_from_the_noisy_posterior():
    rho_01, rho_10 = 0.2, 0.1
    eta = torch.linspace(0, 1, 1001, dtype=D64)  # clean posterior, reaching 0 and 1
    noisy = rho_10 + (1 - rho_01 - rho_10) * eta
    logits = torch.log(noisy) - torch.log1p(-noisy)
    assert estimate_noise_rates(logits, 0.0, 1.0) == pytest.approx((rho_01, rho_10), rel=1e-9)
    est_01, est_10 = estimate_noise_rates(logits)  # default 3% / 97%: slightly inside
    assert est_01 == pytest.approx(rho_01 + 0.7 * 0.03, rel=1e-6)
    assert est_10 == pytest.approx(rho_10 + 0.7 * 0.03, rel=1e-6)


def test_estimate_noise_rates_refuses_an_uninformative_model():
    with pytest.raises(ValueError, match="does not separate the classes"):
        estimate_noise_rates(torch.zeros(100))
    with pytest.raises(ValueError, match="low_quantile < high_quantile"):
        estimate_noise_rates(torch.zeros(10), 0.9, 0.1)
    with pytest.raises(ValueError, match="without NaN"):
        estimate_noise_rates([])


# --- metrics ---------------------------------------------------------------------------------------------------------


def test_metrics_hand_computed():
    acc = pairwise_accuracy(t([1.0, 2.0, 3.0, 0.0]), t([0.0, 2.0, 4.0, -1.0]))
    assert acc.shape == () and acc.item() == 0.5  # the tie counts as wrong
    assert pairwise_accuracy(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([0.0])).dtype == torch.float32
    prob, s = t([0.9, 0.6]), t([1.0, 0.75])
    assert brier_score(prob, s).item() == pytest.approx(0.01625, rel=1e-12)
    assert brier_score(prob, 1.0).item() == pytest.approx((0.01 + 0.16) / 2, rel=1e-12)
    # -(log 0.9) and -(0.75 log 0.6 + 0.25 log 0.4), averaged
    assert soft_cross_entropy(prob, s).item() == pytest.approx(0.358776208225429, rel=1e-12)
    # a certain but wrong probability is clamped: -log(1e-7)
    assert soft_cross_entropy(t([1.0]), 0.0).item() == pytest.approx(16.11809565095832, rel=1e-6)
    assert torch.isfinite(soft_cross_entropy(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))
