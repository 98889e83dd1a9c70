"""The math of the effective-rank audit: spectra, ranks, cosines and the four activation-shift matrices.

After Y. Nakamura, "An Effective-Rank Audit of Alignment-Induced Activation Shifts", arXiv 2605.24583 (method spec:
docs/audit.md). Imports only torch. Every matrix here is d x n: column i is prompt i's residual stream (width d) at
one block's output, last prompt token. Spectra are computed in float64 whatever the activations' dtype.

Definitions (s1 >= s2 >= ... the singular values of M, d x n):
- energy rank rank_eps(M): the least k with sum_{i<=k} s_i^2 >= (1 - eps) sum_i s_i^2; rank_eps(0) = 0 (paper).
- numerical eps-rank: #{s_i > tol * s1}, tol = 1e-3.
- Roy-Vetterli effective rank: exp(-sum p_i ln p_i), p_i = s_i / sum_j s_j (0 for M = 0).
- centering: M_c = M - mbar 1^T, mbar the column mean; residual share ||M_c||^2 / ||M||^2.
"""

from __future__ import annotations

import math

import torch

# Relative slack on the energy threshold: a flat rank-r spectrum must give ceil((1 - eps) r) despite rounding in the
# cumulative sum (e.g. 19 of 20 equal values reaching 0.95 of the total one ulp short).
TIE_SLACK = 1e-12
NUMERICAL_RANK_TOL = 1e-3


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """All singular values of `matrix` (d x n), descending, float64, length min(d, n)."""
    return torch.linalg.svdvals(matrix.to(torch.float64))


def energy_rank(spectrum: torch.Tensor, eps: float) -> int:
    """rank_eps from singular values `spectrum` (descending): the least k whose top-k energy reaches 1 - eps."""
    check_eps(eps)
    energy = spectrum.to(torch.float64) ** 2
    total = float(energy.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(energy, dim=0)
    threshold = (1.0 - eps) * total - TIE_SLACK * total
    return int((cumulative < threshold).sum()) + 1


def numerical_rank(spectrum: torch.Tensor, tol: float = NUMERICAL_RANK_TOL) -> int:
    """#{s_i > tol * s1}; 0 for an all-zero spectrum."""
    if spectrum.numel() == 0 or float(spectrum[0]) == 0.0:
        return 0
    return int((spectrum > tol * spectrum[0]).sum())


def roy_vetterli_erank(spectrum: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy & Vetterli 2007); 0 for an all-zero one."""
    total = float(spectrum.sum())
    if total == 0.0:
        return 0.0
    p = spectrum.to(torch.float64) / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def check_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and 0.0 < eps < 1.0):
        raise ValueError(f"eps must lie strictly between 0 and 1 (the share of energy left out), got {eps!r}")
    return float(eps)


def column_mean(matrix: torch.Tensor) -> torch.Tensor:
    """mbar (d,): the mean column of `matrix` (d x n)."""
    return matrix.to(torch.float64).mean(dim=1)


def center(matrix: torch.Tensor) -> torch.Tensor:
    """M_c = M - mbar 1^T (d x n, float64)."""
    m = matrix.to(torch.float64)
    return m - m.mean(dim=1, keepdim=True)


def residual_share(matrix: torch.Tensor) -> float:
    """||M_c||^2 / ||M||^2 = 1 - n ||mbar||^2 / ||M||^2: the share of energy not in the mean column (nan for M = 0)."""
    total = float((matrix.to(torch.float64) ** 2).sum())
    return float((center(matrix) ** 2).sum()) / total if total > 0 else math.nan


def abs_cos(u: torch.Tensor, v: torch.Tensor) -> float:
    """|cos(u, v)| of two vectors (d,); nan when either is zero (no direction to compare)."""
    u, v = u.to(torch.float64), v.to(torch.float64)
    norms = float(u.norm() * v.norm())
    return abs(float(u @ v)) / norms if norms > 0 else math.nan


def left_singular_vectors(matrix: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """U_k (d x k, float64, orthonormal columns): the top-k left singular vectors of `matrix` (all if k is None)."""
    u, _, _ = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    return u if k is None else u[:, :k]


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(a) and span(b) (a: d x p, b: d x q; any bases), descending."""
    qa, _ = torch.linalg.qr(a.to(torch.float64))
    qb, _ = torch.linalg.qr(b.to(torch.float64))
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


def captured_share(basis: torch.Tensor, reference: torch.Tensor) -> float:
    """||U_k^T r|| / ||r||: how much of `reference` (d,) lies in span(basis) (d x k, orthonormal); nan for r = 0."""
    r = reference.to(torch.float64)
    norm = float(r.norm())
    return float((basis.to(torch.float64).T @ r).norm()) / norm if norm > 0 else math.nan


def shift_matrices(aligned_chat: torch.Tensor, base_chat: torch.Tensor, aligned_raw: torch.Tensor,
                   base_raw: torch.Tensor, control_aligned_chat: torch.Tensor,
                   control_base_chat: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four shift matrices of one layer (each d x n_s, float64) from activations H_m(S, f) (d x n):

    - naive = H_a(chat) - H_b(raw): template and alignment mixed;
    - template = H_a(chat) - H_b(chat): the alignment-stage shift (the headline quantity);
    - aligned = H_a(chat) - H_a(raw): the aligned model's own template effect;
    - did = template - mbar_c 1^T, mbar_c the mean column of the control set's template matrix: the shift common to
      neutral prompts removed (difference in differences).
    Columns of the target-set arguments pair the same prompt; the control set may have another size.
    """
    a_chat, b_chat = aligned_chat.to(torch.float64), base_chat.to(torch.float64)
    template = a_chat - b_chat
    control_mean = column_mean(control_aligned_chat.to(torch.float64) - control_base_chat.to(torch.float64))
    return {
        "naive": a_chat - base_raw.to(torch.float64),
        "template": template,
        "aligned": a_chat - aligned_raw.to(torch.float64),
        "did": template - control_mean[:, None],
    }


def difference_in_means(target: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """DiM (d,): mean column of `target` (d x n_s) minus that of `control` (d x n_c) (Arditi et al.'s direction)."""
    return column_mean(target) - column_mean(control)


def spectrum_report(matrix: torch.Tensor, eps: float, reference: torch.Tensor | None = None, top: int = 5,
                    k_max: int = 10) -> dict:
    """Every per-(layer, variant) column of the audit for one matrix (d x n):

    rank_eps, rho_eps = rank_eps / d, rank_per_min = rank_eps / min(d, n), centered_rank (rank_eps of M_c),
    centered_ratio = centered_rank / rank_eps, top singular values, s1_share = s1^2 / sum s_i^2, residual_share,
    numerical_rank, erank, cos_u1_mean = |cos(u1, mbar)|; with a `reference` r (d,): cos_u1_ref = |cos(u1, r)|,
    max_cos_ref = max_{i<=k}|cos(u_i, r)| and captured_ref = ||U_k^T r|| / ||r|| at k = min(rank_eps, k_max) (at
    least 1). `spectrum` holds every singular value. Quantities undefined for M = 0 are nan.
    """
    d, n = matrix.shape
    u, spectrum, _ = torch.linalg.svd(matrix.to(torch.float64), full_matrices=False)
    rank = energy_rank(spectrum, eps)
    centered = energy_rank(singular_values(center(matrix)), eps)
    energy = float((spectrum**2).sum())
    nonzero = energy > 0
    report = {
        "rank_eps": rank, "rho_eps": rank / d, "rank_per_min": rank / min(d, n), "centered_rank": centered,
        "centered_ratio": centered / rank if rank else math.nan,
        "top_singular_values": spectrum[:top].tolist(),
        "s1_share": float(spectrum[0] ** 2) / energy if nonzero else math.nan,
        "residual_share": residual_share(matrix), "numerical_rank": numerical_rank(spectrum),
        "erank": roy_vetterli_erank(spectrum),
        "cos_u1_mean": abs_cos(u[:, 0], column_mean(matrix)) if nonzero else math.nan,
        "spectrum": spectrum.tolist(),
    }
    if reference is not None:
        k = max(1, min(rank, k_max))
        report["cos_u1_ref"] = abs_cos(u[:, 0], reference) if nonzero else math.nan
        report["max_cos_ref"] = max(abs_cos(u[:, i], reference) for i in range(k)) if nonzero else math.nan
        report["captured_ref"] = captured_share(u[:, :k], reference) if nonzero else math.nan
    return report


def random_frame(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random orthonormal k-frame (d x k, float64): Q of the QR of a Gaussian matrix, signs fixed by R's
    diagonal so the distribution is Haar."""
    q, r = torch.linalg.qr(torch.randn(d, k, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))
