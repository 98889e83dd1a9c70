"""Multi-reference DPO math: losses against hand-computed values and their DPO limits, weighting rules on hand-made
margin tables, and the strategies' step protocol (swcw never reads the current batch; tsw's bandit)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from align.methods.multiref_dpo.math import (
    ThompsonSampling,
    accuracy_weights,
    arwc_weights,
    build_weighting,
    discrimination_weights,
    implicit_reward_margins,
    mdpo_loss,
    mrpo_loss,
    sequence_logps,
    virtual_reference_logps,
)

BETA = 0.5
# Two references' probabilities of the chosen / rejected response of one pair, and their weights.
P_CHOSEN, P_REJECTED, ALPHA = [0.2, 0.4], [0.1, 0.5], [0.25, 0.75]
POLICY_CHOSEN, POLICY_REJECTED = -1.0, -2.0


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_sequence_logps_sum_and_mean_over_the_response_mask():
    per_token = t([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, 0.0, 0.0]])
    mask = t([[0, 1, 1, 0], [1, 0, 0, 0]])
    assert sequence_logps(per_token, mask, normalize=False).tolist() == [-5.0, -0.5]
    assert sequence_logps(per_token, mask, normalize=True).tolist() == [-2.5, -0.5]


def test_virtual_reference_is_the_weighted_harmonic_mean_of_probabilities():
    # 1 / (0.25 / 0.2 + 0.75 / 0.4) = 1 / 3.125 = 0.32
    value = virtual_reference_logps(t(P_CHOSEN).log(), t(ALPHA))
    assert value.item() == pytest.approx(math.log(0.32), abs=1e-12)


def test_virtual_reference_drops_references_with_zero_weight():
    value = virtual_reference_logps(t([-1.3, -0.2, -5.0]), t([0.0, 1.0, 0.0]))
    assert value.item() == pytest.approx(-0.2, abs=1e-12)


def test_mrpo_loss_matches_hand_computation():
    # virtual chosen = log 0.32, virtual rejected = log(1 / (0.25 / 0.1 + 0.75 / 0.5)) = log 0.25
    logit = BETA * ((POLICY_CHOSEN - POLICY_REJECTED) - (math.log(0.32) - math.log(0.25)))
    loss = mrpo_loss(t([POLICY_CHOSEN]), t([POLICY_REJECTED]), t([P_CHOSEN]).log(), t([P_REJECTED]).log(),
                     t(ALPHA), BETA)
    assert loss.item() == pytest.approx(softplus(-logit), abs=1e-12)
    assert loss.item() == pytest.approx(0.522484, abs=1e-6)


def test_mdpo_loss_matches_hand_computation():
    deltas = [math.log(0.2 / 0.1), math.log(0.4 / 0.5)]
    expected = sum(a * softplus(-BETA * ((POLICY_CHOSEN - POLICY_REJECTED) - d)) for a, d in zip(ALPHA, deltas))
    loss = mdpo_loss(t([POLICY_CHOSEN]), t([POLICY_REJECTED]), t([P_CHOSEN]).log(), t([P_REJECTED]).log(),
                     t(ALPHA), BETA)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("loss_fn", [mrpo_loss, mdpo_loss])
def test_one_reference_or_one_hot_weights_give_dpo(loss_fn):
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen,
                                                                                    dtype=torch.float64)
    ref_chosen, ref_rejected = torch.randn(6, 3, generator=gen, dtype=torch.float64), \
        torch.randn(6, 3, generator=gen, dtype=torch.float64)
    dpo = -F.logsigmoid(BETA * ((chosen - rejected) - (ref_chosen[:, 1] - ref_rejected[:, 1])))
    single = loss_fn(chosen, rejected, ref_chosen[:, 1:2], ref_rejected[:, 1:2], t([1.0]), BETA)
    one_hot = loss_fn(chosen, rejected, ref_chosen, ref_rejected, t([0.0, 1.0, 0.0]), BETA)
    torch.testing.assert_close(single, dpo, rtol=0, atol=1e-12)
    torch.testing.assert_close(one_hot, dpo, rtol=0, atol=1e-12)


def test_mdpo_ignores_an_infinite_loss_of_a_reference_with_zero_weight():
    loss = mdpo_loss(t([0.0]), t([0.0]), t([[0.0, -1e6]]), t([[0.0, 1e6]]), t([1.0, 0.0]), BETA)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(math.log(2))


def test_losses_accept_per_pair_weights():
    chosen, rejected = t([-1.0, -1.0]), t([-2.0, -2.0])
    ref_chosen, ref_rejected = t([P_CHOSEN, P_CHOSEN]).log(), t([P_REJECTED, P_REJECTED]).log()
    alpha = t([ALPHA, [1.0, 0.0]])
    for loss_fn in (mrpo_loss, mdpo_loss):
        per_pair = loss_fn(chosen, rejected, ref_chosen, ref_rejected, alpha, BETA)
        assert per_pair[0].item() == pytest.approx(loss_fn(chosen[:1], rejected[:1], ref_chosen[:1], ref_rejected[:1],
                                                           t(ALPHA), BETA).item())
        assert per_pair[1].item() == pytest.approx(softplus(-BETA * (1.0 - math.log(2.0))))


# --- weighting rules on hand-made margin tables ----------------------------------------------------------------------

def test_arwc_weights_are_per_pair_shares_of_absolute_margins():
    weights = arwc_weights(t([[1.0, -3.0], [0.0, 0.0], [2.0, 2.0]]))
    assert weights.tolist() == [[0.25, 0.75], [0.5, 0.5], [0.5, 0.5]]


def test_vdw_weights_sum_absolute_validation_margins():
    assert discrimination_weights(t([[1.0, -3.0], [2.0, 1.0]])).tolist() == pytest.approx([3 / 7, 4 / 7])


def test_vaw_weights_count_each_reference_s_correct_validation_pairs():
    assert accuracy_weights(t([[1.0, -3.0], [2.0, -1.0], [-1.0, 2.0]])).tolist() == pytest.approx([2 / 3, 1 / 3])
    assert accuracy_weights(t([[-1.0, -3.0]])).tolist() == [0.5, 0.5]  # no reference is ever right: uniform


def test_fixed_strategies_broadcast_one_weight_vector():
    deltas = t([[1.0, -3.0], [2.0, -1.0], [-1.0, 2.0]])
    assert build_weighting("uniform", 2).weights(deltas).tolist() == [[0.5, 0.5]] * 3
    assert build_weighting("vaw", 2, deltas).weights(t([[5.0, 5.0]])).tolist() == [[2 / 3, 1 / 3]]
    with pytest.raises(ValueError, match="validation"):
        build_weighting("vdw", 2, None)


def test_swcw_uses_the_mean_absolute_margin_of_the_last_window_batches():
    swcw = build_weighting("swcw", 2, window=2)
    batch = t([[9.0, -9.0]])
    assert swcw.weights(batch).tolist() == [[0.5, 0.5]]  # nothing observed yet: uniform
    swcw.end_step(t([1.0, 3.0]))
    assert swcw.weights(batch).tolist() == [[0.25, 0.75]]
    swcw.end_step(t([3.0, 1.0]))
    assert swcw.weights(batch).tolist() == [[0.5, 0.5]]  # mean of [1, 3] and [3, 1]
    swcw.end_step(t([1.0, 1.0]))  # [1, 3] leaves the window: mean of [3, 1] and [1, 1] = [2, 1]
    assert swcw.weights(batch)[0].tolist() == pytest.approx([2 / 3, 1 / 3])


def test_swcw_onehot_trains_on_the_argmax_reference():
    onehot = build_weighting("swcw_onehot", 3)
    assert onehot.arm() is None and onehot.weights(t([[0.0, 0.0, 0.0]])).tolist() == [[1 / 3] * 3]
    onehot.end_step(t([0.1, 0.7, 0.3]))
    assert onehot.arm() == 1 and onehot.weights(t([[0.0, 0.0, 0.0]])).tolist() == [[0.0, 1.0, 0.0]]


def _run_steps(strategy, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The trainer's protocol: begin, weights of the batch, end with the batch's mean |Delta|."""
    used = []
    for deltas in batches:
        strategy.begin_step()
        used.append(strategy.weights(deltas))
        strategy.end_step(deltas.abs().mean(dim=0), improved=True)
    return used


@pytest.mark.parametrize("name", ["swcw", "swcw_onehot"])
def test_swcw_weights_of_batch_t_depend_only_on_batches_before_t(name):
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(6)]
    reference = _run_steps(build_weighting(name, 3, window=2), batches)
    for step in range(len(batches)):
        # Replace batch t (and everything after it) with unrelated margins, flipped labels included.
        changed = batches[:step] + [-10 * torch.rand(4, 3, generator=gen, dtype=torch.float64) + 5
                                    for _ in batches[step:]]
        weights = _run_steps(build_weighting(name, 3, window=2), changed)
        assert torch.equal(weights[step][0], reference[step][0]), step


def test_arwc_weights_do_depend_on_the_current_pair():
    arwc = build_weighting("arwc", 2)
    assert not torch.equal(arwc.weights(t([[1.0, 3.0]])), arwc.weights(t([[3.0, 1.0]])))


# --- Thompson sampling --------------------------------------------------------------------------------------------

def test_thompson_posterior_and_arms_follow_the_seeded_draws():
    rewards = [1, 0, 1, 1, 0, 0, 1]
    bandit = ThompsonSampling(3, prior=5.0, seed=123)
    rng, a, b, arms = np.random.default_rng(123), [5.0] * 3, [5.0] * 3, []
    for reward in rewards:
        arm = int(np.argmax(rng.beta(a, b)))  # one vector draw per step, as documented
        a[arm] += reward
        b[arm] += 1 - reward
        arms.append(arm)
        bandit.begin_step()
        assert bandit.arm() == arm
        assert bandit.step_weights().tolist() == [float(k == arm) for k in range(3)]
        bandit.end_step(torch.zeros(3), improved=bool(reward))
    assert (bandit.a, bandit.b) == (a, b)
    assert bandit.history == [[arm, reward] for arm, reward in zip(arms, rewards)]
    # Every step adds exactly one observation to the chosen arm's posterior.
    assert sum(bandit.a) + sum(bandit.b) == 30 + len(rewards)
    assert bandit.posterior_means() == [x / (x + y) for x, y in zip(a, b)]


def test_thompson_posterior_by_hand_for_a_single_arm():
    bandit = ThompsonSampling(1, prior=5.0, seed=0)
    for reward in (1, 1, 0, 1):
        bandit.begin_step()
        bandit.end_step(torch.zeros(1), improved=bool(reward))
    assert (bandit.a, bandit.b) == ([8.0], [6.0])
    assert bandit.posterior_means() == [8 / 14]


def test_thompson_concentrates_on_the_clearly_best_arm():
    bandit, env = ThompsonSampling(4, prior=5.0, seed=7), np.random.default_rng(0)
    success = [0.2, 0.3, 0.9, 0.25]
    for _ in range(300):
        bandit.begin_step()
        bandit.end_step(torch.zeros(4), improved=bool(env.random() < success[bandit.arm()]))
    late = [arm for arm, _ in bandit.history[-100:]]
    assert late.count(2) >= 85


def test_thompson_state_round_trips_through_json():
    first = ThompsonSampling(3, prior=2.0, seed=5)
    _run_steps(first, [torch.zeros(1, 3)] * 4)
    restored = ThompsonSampling(3, prior=2.0, seed=999)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    continued, resumed = _run_steps(first, [torch.zeros(1, 3)] * 5), _run_steps(restored, [torch.zeros(1, 3)] * 5)
    assert all(torch.equal(x, y) for x, y in zip(continued, resumed))
    assert first.state_dict() == restored.state_dict()


def test_thompson_needs_an_arm_and_an_outcome():
    bandit = ThompsonSampling(2)
    with pytest.raises(RuntimeError, match="begin_step"):
        bandit.step_weights()
    bandit.begin_step()
    with pytest.raises(ValueError, match="improved"):
        bandit.end_step(torch.zeros(2))


def test_implicit_reward_margins_per_loss():
    chosen, rejected = t([POLICY_CHOSEN]), t([POLICY_REJECTED])
    ref_chosen, ref_rejected = t([P_CHOSEN]).log(), t([P_REJECTED]).log()
    mrpo = implicit_reward_margins("mrpo", chosen, rejected, ref_chosen, ref_rejected, t(ALPHA), BETA)
    assert mrpo.item() == pytest.approx(BETA * (1.0 - math.log(0.32 / 0.25)))
    mdpo = implicit_reward_margins("mdpo", chosen, rejected, ref_chosen, ref_rejected, t(ALPHA), BETA)
    assert mdpo.item() == pytest.approx(BETA * (1.0 - 0.25 * math.log(2.0) - 0.75 * math.log(0.8)))
    for loss in ("mrpo", "mdpo"):  # one reference: DPO's beta * (policy margin - reference margin)
        single = implicit_reward_margins(loss, chosen, rejected, ref_chosen[:, :1], ref_rejected[:, :1], t([1.0]),
                                         BETA)
        assert single.item() == pytest.approx(BETA * (1.0 - math.log(2.0)))
