"""Known truth on the embedded tiny model (spec tests 1-4, 8): planted weight changes are recovered."""

import copy

import pytest
import torch

from align.audit import ranks
from align.audit.activations import CHAT, RAW, decoder_blocks, last_token_activations, projected_out, raw_text, render
from align.audit.prompts import load_prompts
from align.models import ensure_tiny, load_causal_lm, load_tokenizer

PLANTED = 1  # l*: the block whose MLP output projection is changed


@pytest.fixture(scope="module")
def tiny():
    path = str(ensure_tiny())
    model = load_causal_lm(path, dtype="float32").double().eval()
    return model, load_tokenizer(path)


@pytest.fixture(scope="module")
def base_target(tiny, prompts):
    return _acts(*tiny, prompts[0])


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("embedded:arithmetic").head(8).prompts, load_prompts("embedded:neutral").head(8).prompts


def _acts(model, tokenizer, prompts, fmt=CHAT, batch_size=4):
    return last_token_activations(model, tokenizer, render(tokenizer, prompts, fmt), add_special_tokens=fmt == RAW,
                                  batch_size=batch_size).double()


def _planted(model, rank: int, seed: int = 0):
    """A copy of `model` with W_down of block PLANTED += A B^T; returns it and A (d x rank, orthonormal)."""
    g = torch.Generator().manual_seed(seed)
    aligned = copy.deepcopy(model)
    weight = decoder_blocks(aligned)[PLANTED].mlp.down_proj.weight
    a = torch.linalg.qr(torch.randn(weight.shape[0], rank, generator=g, dtype=torch.float64))[0]
    b = torch.randn(weight.shape[1], rank, generator=g, dtype=torch.float64)
    with torch.no_grad():
        weight += a @ b.T
    return aligned, a


def test_same_weights_give_zero_template_and_did_shifts_but_not_template_effects(tiny, prompts):
    model, tokenizer = tiny
    target, control = prompts
    chat, raw, control_chat = _acts(model, tokenizer, target), _acts(model, tokenizer, target, RAW), \
        _acts(model, tokenizer, control)
    for layer in range(chat.shape[0]):
        m = ranks.shift_matrices(chat[layer].T, chat[layer].T, raw[layer].T, raw[layer].T, control_chat[layer].T,
                                 control_chat[layer].T)
        assert ranks.spectrum_report(m["template"], 0.05)["rank_eps"] == 0
        assert ranks.spectrum_report(m["did"], 0.05)["rank_eps"] == 0
        assert ranks.spectrum_report(m["naive"], 0.05)["rank_eps"] > 0
        assert ranks.spectrum_report(m["aligned"], 0.05)["rank_eps"] > 0


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_a_planted_rank_r_update_is_recovered_with_its_directions(tiny, prompts, base_target, rank):
    model, tokenizer = tiny
    aligned, a = _planted(model, rank)
    base_acts, aligned_acts = base_target, _acts(aligned, tokenizer, prompts[0])
    for layer in range(PLANTED):
        assert torch.equal(aligned_acts[layer], base_acts[layer])
    template = (aligned_acts[PLANTED] - base_acts[PLANTED]).T
    assert ranks.numerical_rank(ranks.singular_values(template)) == rank
    cosines = ranks.principal_cosines(ranks.left_singular_vectors(template, rank), a)
    assert bool((cosines >= 1 - 1e-6).all()), cosines
    if rank == 1:
        assert ranks.abs_cos(ranks.left_singular_vectors(template, 1)[:, 0], a[:, 0]) == pytest.approx(1, abs=1e-9)


def _logits(model, tokenizer, prompts):
    batch = tokenizer(render(tokenizer, prompts, CHAT), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


def test_projecting_out_the_planted_subspace_makes_base_and_aligned_agree(tiny, prompts):
    model, tokenizer = tiny
    aligned, a = _planted(model, 2)
    target = prompts[0][:4]
    with projected_out(model, {PLANTED: a}), projected_out(aligned, {PLANTED: a}):
        torch.testing.assert_close(_logits(aligned, tokenizer, target), _logits(model, tokenizer, target),
                                   rtol=0, atol=1e-9)
    with projected_out(aligned, {PLANTED: torch.zeros(a.shape[0], 0, dtype=torch.float64)}):
        assert torch.equal(_logits(aligned, tokenizer, target), _logits(aligned, tokenizer, target).clone())
        unhooked = _logits(aligned, tokenizer, target)
    random = ranks.random_frame(a.shape[0], 2, torch.Generator().manual_seed(99))  # not the seed of A
    with projected_out(model, {PLANTED: random}), projected_out(aligned, {PLANTED: random}):
        assert (_logits(aligned, tokenizer, target) - _logits(model, tokenizer, target)).abs().max() > 1e-3
    torch.testing.assert_close(_logits(aligned, tokenizer, target), unhooked, rtol=0, atol=0)  # hooks removed


def test_a_k0_hook_changes_nothing(tiny, prompts):
    model, tokenizer = tiny
    before = _logits(model, tokenizer, prompts[0][:2])
    with projected_out(model, {layer: torch.zeros(128, 0) for layer in range(4)}):
        assert torch.equal(_logits(model, tokenizer, prompts[0][:2]), before)


def test_a_constant_shift_is_removed_by_difference_in_differences(tiny, prompts):
    model, tokenizer = tiny
    aligned = copy.deepcopy(model)
    mlp = decoder_blocks(aligned)[PLANTED].mlp
    c = torch.randn(mlp.down_proj.out_features, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    shifted = torch.nn.Linear(mlp.down_proj.in_features, mlp.down_proj.out_features, dtype=torch.float64)
    with torch.no_grad():
        shifted.weight.copy_(mlp.down_proj.weight)
        shifted.bias.copy_(c)
    mlp.down_proj = shifted
    target, control = prompts
    at = {name: _acts(m, tokenizer, p)[PLANTED].T for name, m, p in
          (("a_t", aligned, target), ("b_t", model, target), ("a_c", aligned, control), ("b_c", model, control))}
    m = ranks.shift_matrices(at["a_t"], at["b_t"], at["a_t"], at["b_t"], at["a_c"], at["b_c"])
    torch.testing.assert_close(m["template"], c[:, None].expand_as(m["template"]), rtol=0, atol=1e-9)
    assert ranks.abs_cos(ranks.left_singular_vectors(m["template"], 1)[:, 0], c) == pytest.approx(1, abs=1e-12)
    assert float(m["did"].abs().max()) < 1e-9


def test_batch_size_does_not_change_activations(prompts):
    path = str(ensure_tiny())
    model, tokenizer = load_causal_lm(path, dtype="float32").eval(), load_tokenizer(path)
    mixed = [prompts[0][0], prompts[1][0], prompts[1][3], prompts[0][5]]  # different lengths: padding in a batch
    one, four = _acts(model, tokenizer, mixed, batch_size=1), _acts(model, tokenizer, mixed, batch_size=4)
    assert one.shape == (4, 4, 128)
    torch.testing.assert_close(one, four, rtol=0, atol=1e-5)


def test_raw_text_is_the_user_turns():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    assert raw_text(messages) == "hi\n\nbye"
