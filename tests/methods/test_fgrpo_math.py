"""f-GRPO's pure math: the six divergences' links, conjugates and closed-form terms, the clamp, the token loss and
f-HAL's pair loss. Hand-computed expectations; no model, no TRL."""

import math

import pytest
import torch

from align.methods.fgrpo.math import (
    DEFAULT_CLAMP,
    DIVERGENCES,
    clamp_log_ratio,
    fgrpo_token_loss,
    fpa_loss,
    get_divergence,
    group_token_weights,
)

NAMES = ["kl", "reverse_kl", "pearson", "hellinger", "js", "tv"]
LOW, HIGH = DEFAULT_CLAMP
EDGES = torch.tensor([LOW, LOW + 1e-3, -1e-3, 0.0, 1e-3, HIGH - 1e-3, HIGH], dtype=torch.float64)


def test_registry_holds_the_six_divergences_and_rejects_other_names():
    assert sorted(DIVERGENCES) == sorted(NAMES)
    assert get_divergence(DIVERGENCES["js"]) is DIVERGENCES["js"]
    with pytest.raises(ValueError, match="kl, reverse_kl, pearson, hellinger, js, tv"):
        get_divergence("chi2")
    with pytest.raises(ValueError, match="Unknown f-divergence 'KL'"):
        fgrpo_token_loss(torch.zeros(1, 1), torch.ones(1), "KL")
    with pytest.raises(ValueError, match="Unknown f-divergence"):
        fpa_loss(torch.zeros(1), torch.zeros(1), "forward_kl")


def test_domains_are_the_spec_table():
    assert [str(DIVERGENCES[n].domain) for n in NAMES] == [
        "(-inf, inf)", "(-inf, 0.0)", "(-inf, inf)", "(-inf, 1.0)", f"(-inf, {math.log(2)})", "[-0.5, 0.5]"]


# --- the link maps into dom f* ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_link_lies_in_the_domain_of_the_conjugate(name):
    div = DIVERGENCES[name]
    # strictly inside over a grid well beyond the clamp range, the clamp edges included
    grid = torch.cat([torch.linspace(-30, 30, 6001, dtype=torch.float64), EDGES])
    assert div.domain.contains(div.link(grid)).all()
    assert torch.isfinite(div.conjugate(div.link(grid))).all()
    # over [-50, 50] the true gap to sup dom f* (hellinger exp(-v), js softplus(-v)) drops below float64's
    # resolution near v = 37 and g(v) rounds onto the bound: the closure still holds, and the closed forms the loss
    # uses stay finite there
    wide = torch.linspace(-50, 50, 10001, dtype=torch.float64)
    g = div.link(wide)
    assert (g >= div.domain.low).all() and (g <= div.domain.high).all()
    assert torch.isfinite(div.positive_term(wide)).all() and torch.isfinite(div.negative_term(wide)).all()


def test_link_rounds_onto_the_bound_only_beyond_float64_resolution():
    v = torch.tensor([36.0, 40.0], dtype=torch.float64)
    assert DIVERGENCES["hellinger"].domain.contains(DIVERGENCES["hellinger"].link(v)).tolist() == [True, False]
    assert DIVERGENCES["hellinger"].negative_term(v)[1].item() == pytest.approx(math.expm1(40.0))


# --- closed forms ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_closed_forms_equal_the_composition(name):
    div = DIVERGENCES[name]
    v = torch.linspace(-15, 15, 3001, dtype=torch.float64)
    g = div.link(v)
    composed = div.conjugate(g)
    assert torch.isfinite(composed).all()
    torch.testing.assert_close(div.positive_term(v), -g, rtol=1e-12, atol=1e-12)
    # s / (1 - s) and -log(2 - exp(s)) lose digits to cancellation near sup dom f*; the closed forms do not
    torch.testing.assert_close(div.negative_term(v), composed, rtol=1e-6, atol=1e-9)


# -g(v) and f*(g(v)) at v = -1, 0, 1, from the math module by hand
HAND = {
    "kl": ([1.0, 0.0, -1.0], [0.1353352832366127, 0.36787944117144233, 1.0]),
    "reverse_kl": ([2.718281828459045, 1.0, 0.36787944117144233], [-2.0, -1.0, 0.0]),
    "pearson": ([1.0, 0.0, -1.0], [-0.75, 0.0, 1.25]),
    "hellinger": ([1.718281828459045, 0.0, -0.6321205588285577], [-0.6321205588285577, 0.0, 1.718281828459045]),
    "js": ([0.6201145069582775, 0.0, -0.3798854930417224], [-0.3798854930417224, 0.0, 0.6201145069582775]),
    "tv": ([0.3807970779778824, 0.0, -0.3807970779778824], [-0.3807970779778824, 0.0, 0.3807970779778824]),
}


@pytest.mark.parametrize("name", NAMES)
def test_terms_match_hand_computed_values(name):
    div = DIVERGENCES[name]
    v = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    positive, negative = HAND[name]
    assert div.positive_term(v).tolist() == pytest.approx(positive, rel=1e-12, abs=1e-15)
    assert div.negative_term(v).tolist() == pytest.approx(negative, rel=1e-12, abs=1e-15)
    # float32 agrees to float32 precision
    assert div.negative_term(v.float()).tolist() == pytest.approx(negative, rel=1e-6, abs=1e-7)


# hand-derived d/dv of -g(v) and of f*(g(v))
DERIVATIVES = {
    "kl": (lambda v: -torch.ones_like(v), lambda v: torch.exp(v - 1)),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda v: torch.ones_like(v)),
    "pearson": (lambda v: -torch.ones_like(v), lambda v: 1 + v / 2),
    "hellinger": (lambda v: -torch.exp(-v), lambda v: torch.exp(v)),
    "js": (lambda v: -torch.sigmoid(-v), lambda v: torch.sigmoid(v)),
    "tv": (lambda v: -0.5 * (1 - torch.tanh(v) ** 2), lambda v: 0.5 * (1 - torch.tanh(v) ** 2)),
}


@pytest.mark.parametrize("name", NAMES)
def test_autograd_matches_hand_derived_derivatives(name):
    div = DIVERGENCES[name]
    d_positive, d_negative = DERIVATIVES[name]
    v = torch.cat([torch.linspace(-5, 5, 101, dtype=torch.float64), EDGES]).requires_grad_()
    (grad_positive,) = torch.autograd.grad(div.positive_term(v).sum(), v)
    (grad_negative,) = torch.autograd.grad(div.negative_term(v).sum(), v)
    torch.testing.assert_close(grad_positive, d_positive(v.detach()), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_negative, d_negative(v.detach()), rtol=1e-12, atol=1e-12)


def test_hand_derivatives_at_zero():
    v = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    expected = {"kl": math.exp(-1), "reverse_kl": 1.0, "pearson": 1.0, "hellinger": 1.0, "js": 0.5, "tv": 0.5}
    for name, slope in expected.items():
        (grad,) = torch.autograd.grad(DIVERGENCES[name].negative_term(v).sum(), v)
        assert grad.item() == pytest.approx(slope, rel=1e-12), name


# --- clamp and precision ---------------------------------------------------------------------------------------------


def test_clamp_log_ratio_clamps_and_reports_hits():
    r = torch.tensor([[-12.0, -10.0, 0.5], [10.0, 10.5, float("inf")]], requires_grad=True)
    clamped, hit = clamp_log_ratio(r, -10.0, 10.0)
    assert clamped.tolist() == [[-10.0, -10.0, 0.5], [10.0, 10.0, 10.0]]
    assert hit.tolist() == [[True, False, False], [False, True, True]]  # on the bound is not a hit
    clamped.sum().backward()
    assert r.grad.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]  # out-of-range tokens get no gradient
    assert clamp_log_ratio(torch.tensor([-11.0, 11.0]))[0].tolist() == list(DEFAULT_CLAMP)
    assert clamp_log_ratio(torch.tensor([1.0], dtype=torch.bfloat16), -1.0, 1.0)[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="low < high"):
        clamp_log_ratio(r, 1.0, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_no_inf_or_nan_at_the_clamp_edges(name, dtype):
    raw = torch.tensor([[-1e4, LOW, -1.0, 0.0], [1.0, HIGH, 1e4, 3.0]], dtype=dtype)
    r, _ = clamp_log_ratio(raw)
    r.requires_grad_()
    advantages = torch.tensor([1.5, -0.5], dtype=dtype)
    loss, positive, negative = fgrpo_token_loss(r, advantages, name)
    assert loss.dtype == positive.dtype == negative.dtype == torch.float32
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert r.grad.dtype == dtype and torch.isfinite(r.grad).all()
    # both signs at both edges
    edges = torch.tensor([[LOW, HIGH], [LOW, HIGH]], dtype=dtype, requires_grad=True)
    for a in (torch.tensor([1.0, -1.0], dtype=dtype), torch.tensor([-1.0, 1.0], dtype=dtype)):
        loss, _, _ = fgrpo_token_loss(edges, a, name)
        (grad,) = torch.autograd.grad(loss.sum(), edges)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    pair = fpa_loss(torch.tensor([LOW, HIGH], dtype=dtype), torch.tensor([HIGH, LOW], dtype=dtype), name)
    assert pair.dtype == torch.float32 and torch.isfinite(pair)


# --- token loss ------------------------------------------------------------------------------------------------------


def test_token_loss_hand_computed_for_js_and_parts_split_by_sign():
    r = torch.tensor([[0.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
    a = torch.tensor([2.0, -0.5, 0.0])
    loss, positive, negative = fgrpo_token_loss(r, a, "js")
    expected = [[0.0, 2 * -0.3798854930417224],  # 2 * (softplus(-r) - log 2)
                [0.5 * -0.3798854930417224, 0.5 * 0.6201145069582775],  # 0.5 * (softplus(r) - log 2)
                [0.0, 0.0]]
    torch.testing.assert_close(loss, torch.tensor(expected))
    torch.testing.assert_close(positive, torch.tensor([expected[0], [0.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(negative, torch.tensor([[0.0, 0.0], expected[1], [0.0, 0.0]]))
    assert loss.shape == positive.shape == negative.shape == (3, 2)


@pytest.mark.parametrize("name", NAMES)
def test_zero_advantage_rows_give_exactly_zero_loss_and_gradient(name):
    # r = 1e4 would overflow exp in every unused branch: nothing of it may leak into the zero rows or the others
    r = torch.tensor([[0.3, -2.0, 1e4], [0.3, -2.0, 5.0], [-1e4, 0.7, 1e4]], requires_grad=True)
    a = torch.tensor([0.0, 1.0, 0.0])
    loss, positive, negative = fgrpo_token_loss(r, a, name)
    loss.sum().backward()
    assert loss[[0, 2]].eq(0).all() and positive[[0, 2]].eq(0).all() and negative.eq(0).all()
    assert r.grad[[0, 2]].eq(0).all() and not r.grad.isnan().any()
    torch.testing.assert_close(loss[1], DIVERGENCES[name].positive_term(r[1].detach()))


@pytest.mark.parametrize("name", NAMES)
def test_token_loss_is_abs_advantage_times_the_sign_branch(name):
    div = DIVERGENCES[name]
    r = torch.linspace(-3, 3, 12).reshape(3, 4)
    a = torch.tensor([0.7, -1.3, 2.0])
    loss, positive, negative = fgrpo_token_loss(r, a, name)
    torch.testing.assert_close(loss[0], 0.7 * div.positive_term(r[0]))
    torch.testing.assert_close(loss[1], 1.3 * div.negative_term(r[1]))
    torch.testing.assert_close(loss[2], 2.0 * div.positive_term(r[2]))
    torch.testing.assert_close(positive + negative, loss)


def test_pearson_gradient_at_the_reference_is_beta_times_the_policy_gradient():
    beta = 0.04
    a = torch.tensor([1.2, -0.8, 0.0, -2.5, 0.3])
    ref_logp = torch.log(torch.rand(5, 7, generator=torch.Generator().manual_seed(0)))
    logp = ref_logp.clone().requires_grad_()
    r = beta * (logp - ref_logp)  # 0: policy == reference
    loss, _, _ = fgrpo_token_loss(r, a, "pearson")
    (grad_r,) = torch.autograd.grad(loss.sum(), r, retain_graph=True)
    torch.testing.assert_close(grad_r, -a[:, None].expand(5, 7))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    pg_logp = ref_logp.clone().requires_grad_()
    (pg_grad,) = torch.autograd.grad((-a[:, None] * pg_logp).sum(), pg_logp)  # unclipped GRPO at ratio 1
    torch.testing.assert_close(grad, beta * pg_grad)


def test_other_divergences_reweight_negatives_at_the_reference():
    r = torch.zeros(2, 1, requires_grad=True)
    a = torch.tensor([1.0, -1.0])
    slopes = {}
    for name in NAMES:
        (grad,) = torch.autograd.grad(fgrpo_token_loss(r, a, name)[0].sum(), r)
        slopes[name] = grad.flatten().tolist()
    assert slopes["pearson"] == [-1.0, 1.0]
    assert slopes["js"] == pytest.approx([-0.5, 0.5])
    assert slopes["kl"] == pytest.approx([-1.0, math.exp(-1)])


def test_token_loss_checks_shapes():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        fgrpo_token_loss(torch.zeros(2, 3), torch.zeros(3), "kl")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        fgrpo_token_loss(torch.zeros(6), torch.zeros(6), "kl")


# --- f-HAL pair loss -------------------------------------------------------------------------------------------------


def test_fpa_loss_hand_computed_for_js():
    r_w = torch.tensor([1.0, 0.0])
    r_l = torch.tensor([-1.0, 1.0])
    # pair 1: softplus(-1) - log 2 + softplus(-1) - log 2; pair 2: 0 + softplus(1) - log 2
    expected = (2 * -0.3798854930417224 + 0.6201145069582775) / 2
    loss = fpa_loss(r_w, r_l, "js")
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_fpa_loss_hand_computed_for_pearson_and_its_gradient():
    r_w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    r_l = torch.tensor([1.0, 0.0, -2.0], requires_grad=True)
    loss = fpa_loss(r_w, r_l, "pearson")
    # (-0.5 + 1.25) + (1 + 0) + (-2 + (-2 + 1)) = -1.25, over 3 pairs
    assert loss.item() == pytest.approx(-1.25 / 3)
    loss.backward()
    assert r_w.grad.tolist() == pytest.approx([-1 / 3] * 3)
    assert r_l.grad.tolist() == pytest.approx([1.5 / 3, 1.0 / 3, 0.0])  # (1 + r/2) / 3


def test_fpa_loss_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        fpa_loss(torch.zeros(3), torch.zeros(2), "js")
    with pytest.raises(ValueError, match="same shape"):
        fpa_loss(torch.zeros(2, 3), torch.zeros(2, 3), "js")
    with pytest.raises(ValueError, match="P > 0"):
        fpa_loss(torch.zeros(0), torch.zeros(0), "js")


def test_group_token_weights_average_within_groups_then_over_groups():
    # groups of 2: (1 + 3) and (4 + 4) tokens -> 1 / (2 groups x 4) and 1 / (2 x 8) per token
    weights = group_token_weights(torch.tensor([1, 3, 4, 4]), 2)
    assert weights.tolist() == [1 / 8, 1 / 8, 1 / 16, 1 / 16]
    assert (weights * torch.tensor([1, 3, 4, 4])).sum().item() == pytest.approx(1.0)  # all tokens weigh 1 in total
    # equal group lengths: the same weight as the batch token mean, 1 / 12
    assert group_token_weights(torch.tensor([2, 4, 3, 3]), 2).tolist() == pytest.approx([1 / 12] * 4, rel=1e-6)
    assert group_token_weights(torch.tensor([0, 0, 2, 2]), 2).tolist() == [0.0, 0.0, 1 / 8, 1 / 8]  # empty group
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_token_weights(torch.tensor([1, 2, 3, 4]), 3)
