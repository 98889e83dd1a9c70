"""The audit's math against hand-computed spectra and known structure (spec tests 1, 5, 6, 7)."""

import math

import pytest
import torch

from align.audit import ranks


def _rank_r(d: int, n: int, r: int, seed: int = 0, flat: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    left = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    values = torch.ones(r, dtype=torch.float64) if flat else torch.linspace(3, 1, r, dtype=torch.float64)
    return left @ torch.diag(values) @ right.T


def test_zero_matrix_has_rank_zero_and_rho_zero():
    report = ranks.spectrum_report(torch.zeros(6, 4, dtype=torch.float64), 0.05, torch.ones(6))
    assert report["rank_eps"] == 0 and report["rho_eps"] == 0 and report["numerical_rank"] == 0
    assert report["erank"] == 0 and report["centered_rank"] == 0
    assert math.isnan(report["cos_u1_ref"]) and math.isnan(report["residual_share"])


def test_ranks_against_hand_computed_spectra():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)  # energies 9, 4, 1: total 14
    assert ranks.energy_rank(s, 0.05) == 3  # 13/14 = 0.929 < 0.95
    assert ranks.energy_rank(s, 0.10) == 2  # 13/14 >= 0.90
    assert ranks.energy_rank(s, 0.40) == 1  # 9/14 = 0.643 >= 0.60
    assert ranks.numerical_rank(s) == 3
    assert ranks.numerical_rank(torch.tensor([1.0, 2e-3, 5e-4], dtype=torch.float64)) == 2
    p = torch.tensor([0.5, 1 / 3, 1 / 6], dtype=torch.float64)
    assert ranks.roy_vetterli_erank(s) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    assert ranks.roy_vetterli_erank(torch.ones(7, dtype=torch.float64)) == pytest.approx(7.0)


@pytest.mark.parametrize("r", [1, 3, 7, 20])
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.10, 0.20])
def test_flat_rank_r_spectrum_gives_ceil_of_one_minus_eps_r(r, eps):
    matrix = _rank_r(32, 24, r, flat=True)
    assert ranks.energy_rank(ranks.singular_values(matrix), eps) == math.ceil(round((1 - eps) * r, 9))


def _left_out(matrix: torch.Tensor, basis: torch.Tensor) -> float:
    """||(I - U U^T) M||^2."""
    return float(((matrix - basis @ (basis.T @ matrix)) ** 2).sum())


def test_energy_rank_is_monotone_bounded_scale_invariant_and_tight():
    g = torch.Generator().manual_seed(1)
    matrix = torch.randn(20, 12, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, -2, 12,
                                                                                                dtype=torch.float64))
    s = ranks.singular_values(matrix)
    previous = None
    for eps in (0.01, 0.05, 0.1, 0.2, 0.5, 0.9):
        k = ranks.energy_rank(s, eps)
        assert 1 <= k <= min(matrix.shape)
        assert previous is None or k <= previous
        previous = k
        assert ranks.energy_rank(ranks.singular_values(1e6 * matrix), eps) == k
        u = ranks.left_singular_vectors(matrix, k)
        total = float((matrix**2).sum())
        assert _left_out(matrix, u) <= eps * total * (1 + 1e-12)
        assert _left_out(matrix, u[:, :k - 1]) > eps * total
    mean = ranks.column_mean(matrix)
    assert float((matrix**2).sum()) == pytest.approx(matrix.shape[1] * float(mean @ mean)
                                                     + float((ranks.center(matrix) ** 2).sum()))


def test_eps_outside_the_open_unit_interval_is_refused():
    for eps in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ranks.energy_rank(torch.ones(3), eps)


def test_difference_in_differences_finds_the_target_direction_a_large_common_shift_hides():
    """Spec test 5: target columns c + alpha_i v + noise, control c + noise, |c| >> |v|."""
    g = torch.Generator().manual_seed(2)
    d, n = 64, 48
    c = torch.randn(d, generator=g, dtype=torch.float64)
    c = 50 * c / c.norm()
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v = v - (v @ c) / (c @ c) * c
    v = v / v.norm()
    alpha = 2 + torch.rand(n, generator=g, dtype=torch.float64)
    noise = lambda: 0.05 * torch.randn(d, n, generator=g, dtype=torch.float64)  # noqa: E731
    base_t, base_c = torch.randn(d, n, generator=g, dtype=torch.float64), torch.randn(d, n, generator=g,
                                                                                       dtype=torch.float64)
    aligned_t = base_t + c[:, None] + alpha[None] * v[:, None] + noise()
    aligned_c = base_c + c[:, None] + noise()
    m = ranks.shift_matrices(aligned_t, base_t, aligned_t, base_t, aligned_c, base_c)
    assert ranks.abs_cos(ranks.left_singular_vectors(m["template"], 1)[:, 0], v) < 0.2
    assert ranks.abs_cos(ranks.left_singular_vectors(m["did"], 1)[:, 0], v) > 0.99
    report = ranks.spectrum_report(m["did"], 0.05, reference=v)
    assert report["cos_u1_ref"] > 0.99 and report["captured_ref"] > 0.99


def test_prompt_order_changes_nothing_and_control_order_leaves_did_unchanged():
    """Spec test 6."""
    g = torch.Generator().manual_seed(3)
    d, n = 16, 10
    acts = [torch.randn(d, n, generator=g, dtype=torch.float64) for _ in range(6)]
    reference = torch.randn(d, generator=g, dtype=torch.float64)
    m = ranks.shift_matrices(*acts)
    perm, control_perm = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    shuffled = ranks.shift_matrices(*(a[:, perm] for a in acts[:4]), *(a[:, control_perm] for a in acts[4:]))
    for name in m:
        before = ranks.spectrum_report(m[name], 0.05, reference)
        after = ranks.spectrum_report(shuffled[name], 0.05, reference)
        for key in ("rank_eps", "centered_rank", "numerical_rank"):
            assert before[key] == after[key]
        for key in ("spectrum", "erank", "cos_u1_ref", "cos_u1_mean", "residual_share", "captured_ref"):
            assert before[key] == pytest.approx(after[key], rel=1e-9, abs=1e-12)
    control_only = ranks.shift_matrices(*acts[:4], *(a[:, control_perm] for a in acts[4:]))
    torch.testing.assert_close(control_only["did"], m["did"], rtol=0, atol=1e-12)


def test_principal_cosines_and_random_frames():
    g = torch.Generator().manual_seed(4)
    a = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))[0]
    mixed = a @ torch.randn(3, 3, generator=g, dtype=torch.float64)  # another basis of span(a)
    assert torch.allclose(ranks.principal_cosines(a, mixed), torch.ones(3, dtype=torch.float64))
    frame = ranks.random_frame(10, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(frame.T @ frame, torch.eye(4, dtype=torch.float64))
    assert not torch.allclose(frame, ranks.random_frame(10, 4, torch.Generator().manual_seed(1)))
