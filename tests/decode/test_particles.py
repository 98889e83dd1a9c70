"""The particle engine (align.decode.particles) on a toy LM with a 4-token vocabulary (3 letters and a stop token)
and completions of at most 2 tokens, whose every completion's probability is enumerated exactly: the spec's
identities as distribution tests with a fixed seed budget."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats
from transformers import BatchEncoding, LlamaConfig, LlamaForCausalLM

from align.decode import particles
from align.decode.methods import pool_stats
from align.decode.particles import Engine, Settings, choose

EOS, LENGTH, PROMPT = 3, 2, [0, 1, 2]


class ToyTokenizer:
    """What `align.generation.generate` and the engine use of a tokenizer: left padding and decoding."""

    eos_token_id = pad_token_id = EOS

    def pad(self, encoded, padding, padding_side, return_tensors):
        rows = encoded["input_ids"]
        width = max(len(r) for r in rows)
        return BatchEncoding({"input_ids": torch.tensor([[EOS] * (width - len(r)) + r for r in rows]),
                              "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])})

    def decode(self, ids, skip_special_tokens=True):
        return "".join("abc"[i] for i in ids if i != EOS)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         eos_token_id=EOS, pad_token_id=EOS, bos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen the output so the distribution is far from uniform
        model.lm_head.weight.mul_(6.0)
    return model, ToyTokenizer()


def completions() -> list[tuple[int, ...]]:
    """Every completion: k < LENGTH letters then the stop token, or LENGTH letters (truncated)."""
    ended = [tuple(c) + (EOS,) for k in range(LENGTH) for c in itertools.product(range(3), repeat=k)]
    return ended + list(itertools.product(range(3), repeat=LENGTH))


@torch.no_grad()
def log_p(model, sequence: tuple[int, ...]) -> float:
    logits = model(torch.tensor([PROMPT + list(sequence)])).logits[0].double()
    steps = torch.log_softmax(logits[len(PROMPT) - 1:-1], -1)
    return sum(steps[i, t].item() for i, t in enumerate(sequence))


def reward(indices, texts):
    """R in [0, 1]: the share of 'a's (partial texts too)."""
    return [t.count("a") / max(len(t), 1) for t in texts]


def exact(model, lam: float, alpha: float = 1.0) -> dict:
    """pi(y) ∝ p(y)^alpha exp(lam R(y)) over every completion."""
    ys = completions()
    logs = torch.tensor([alpha * log_p(model, y) + lam * reward([0], [ToyTokenizer().decode(y)])[0] for y in ys],
                        dtype=torch.float64)
    return dict(zip(ys, torch.softmax(logs, 0).tolist()))


def draws(model, tokenizer, settings: Settings, prompts: int, seed: int = 0, score=None):
    generator = torch.Generator().manual_seed(seed)
    engine = Engine(model, tokenizer, settings, score, generator)
    pools = engine.run([PROMPT] * prompts)
    return pools, [tuple(pool.particles[choose(pool, tokenizer, settings.selection, generator)].tokens)
                   for pool in pools]


def chi_square_p(samples: list, law: dict) -> float:
    observed = [samples.count(y) for y in law]
    expected = [law[y] * len(samples) for y in law]
    return stats.chisquare(observed, expected).pvalue


def tv(samples: list, law: dict) -> float:
    return 0.5 * sum(abs(samples.count(y) / len(samples) - q) for y, q in law.items())


def test_the_recorded_log_p_is_the_models(toy):
    model, tokenizer = toy
    pools, _ = draws(model, tokenizer, Settings(n=4, block=1, max_new_tokens=LENGTH, lam=0.0, variant="final"), 3)
    for particle in (p for pool in pools for p in pool.particles):
        assert sum(particle.logp) == pytest.approx(log_p(model, tuple(particle.tokens)), abs=1e-5)
        assert particle.logq == pytest.approx(particle.logp, abs=1e-6)  # tau 1: q = p


def test_constant_potentials_with_alpha_one_sample_like_plain_sampling(toy):
    """lambda 0, alpha = tau = 1: increments 0, ESS = N, never resamples; the output's law is p (identity 1)."""
    model, tokenizer = toy
    pools, samples = draws(model, tokenizer, Settings(n=4, block=1, max_new_tokens=LENGTH, lam=0.0), 600,
                           score=reward)
    assert all(pool.resamples == 0 and torch.all(pool.logw.abs() < 1e-9) for pool in pools)
    assert chi_square_p(samples, exact(model, 0.0)) > 1e-3


def test_one_particle_without_resampling_is_plain_sampling_whatever_the_potentials(toy):
    """N = 1, MH off: a draw from q = p, though the prefix potential is far from constant (identity 2)."""
    model, tokenizer = toy
    _, samples = draws(model, tokenizer, Settings(n=1, block=1, max_new_tokens=LENGTH, lam=3.0, mh_steps=0), 600,
                       seed=1, score=reward)
    assert chi_square_p(samples, exact(model, 0.0)) > 1e-3


def test_a_final_only_potential_gives_softmax_lambda_r_weights(toy):
    """alpha = tau = 1, no twist, kappa 0: normalised W = softmax(lambda R_i); lambda 0 gives uniform (identity 5)."""
    model, tokenizer = toy
    for lam in (0.0, 2.5):
        pools, _ = draws(model, tokenizer, Settings(n=6, block=1, max_new_tokens=LENGTH, lam=lam, kappa=0.0,
                                                    variant="final"), 4, score=reward)
        for pool in pools:
            rewards = torch.tensor([p.reward for p in pool.particles], dtype=torch.float64)
            assert torch.allclose(torch.softmax(pool.logw, 0), torch.softmax(lam * rewards, 0), atol=1e-9)


@pytest.mark.parametrize("variant", ["prefix", "lookahead"])
def test_smc_moves_towards_pi_and_its_normaliser_is_unbiased(toy, variant):
    """The output is much closer to pi ∝ p exp(lambda R) than p is (identity 6), and mean exp(log Z_hat) ≈ Z."""
    model, tokenizer = toy
    lam, pi, p = 3.0, exact(model, 3.0), exact(model, 0.0)
    settings = Settings(n=8, block=1, max_new_tokens=LENGTH, lam=lam, kappa=0.5, variant=variant)
    pools, samples = draws(model, tokenizer, settings, 300, seed=2, score=reward)
    assert tv(samples, pi) < 0.5 * sum(abs(pi[y] - p[y]) for y in pi) / 2
    z = sum(math.exp(log_p(model, y) + lam * reward([0], [tokenizer.decode(y)])[0]) for y in pi)
    estimates = torch.tensor([math.exp(pool_stats(pool)["log_z"]) for pool in pools])
    assert estimates.mean().item() == pytest.approx(z, rel=0.1)
    assert sum(pool.resamples for pool in pools) > 0


def test_finished_particles_are_carried_not_extended(toy, monkeypatch):
    """A particle that drew the stop token is never sent to generate again; its tokens end at the stop token."""
    model, tokenizer = toy
    requested = []
    real_extend = particles.extend

    def spy(model, tokenizer, rows, *args, **kwargs):
        requested.extend(rows)
        return real_extend(model, tokenizer, rows, *args, **kwargs)

    monkeypatch.setattr(particles, "extend", spy)
    pools, _ = draws(model, tokenizer, Settings(n=8, block=1, max_new_tokens=4, lam=0.0, kappa=0.0,
                                                variant="final"), 20)
    assert all(EOS not in row[len(PROMPT):] for row in requested)
    ended = [p for pool in pools for p in pool.particles if p.finished]
    assert ended and all(p.tokens[-1] == EOS and EOS not in p.tokens[:-1] for p in ended)
    assert all(len(p.tokens) == 4 for pool in pools for p in pool.particles if not p.finished)


def test_forward_tokens_count_each_blocks_prefill_and_its_further_tokens(toy):
    """Without resampling, a particle of n tokens drawn in blocks of B cost, per block, the prefill of the prompt and
    its prefix (which yields the block's first token) and one position per further token; phases are timed."""
    model, tokenizer = toy
    block, settings = 2, Settings(n=4, block=2, max_new_tokens=5, lam=0.0, kappa=0.0, variant="final")
    generator = torch.Generator().manual_seed(0)
    engine = Engine(model, tokenizer, settings, None, generator)
    pools = engine.run([PROMPT] * 6)
    for pool in pools:
        expected = 0
        for p in pool.particles:
            prefix = 0
            while prefix < len(p.tokens):
                size = min(block, len(p.tokens) - prefix)
                expected += len(PROMPT) + prefix + size - 1
                prefix += size
        assert pool.forward_tokens == expected
        assert pool.generated_tokens == sum(len(p.tokens) for p in pool.particles)
    assert any(len(p.tokens) > block for pool in pools for p in pool.particles)  # some took several blocks
    assert engine.timer.seconds["generate"] > 0 and not {"lookahead", "move"} & set(engine.timer.seconds)


def test_deterministic_under_a_seed_with_resampling_and_moves(toy):
    model, tokenizer = toy
    settings = Settings(n=6, block=1, max_new_tokens=3, lam=2.0, kappa=1.0, mh_steps=2)
    runs = [draws(model, tokenizer, settings, 5, seed=11, score=reward) for _ in range(2)]
    (pools_a, picks_a), (pools_b, picks_b) = runs
    assert picks_a == picks_b
    assert [[p.tokens for p in pool.particles] for pool in pools_a] == \
        [[p.tokens for p in pool.particles] for pool in pools_b]
    assert all(torch.equal(a.logw, b.logw) for a, b in zip(pools_a, pools_b))
    assert sum(pool.mh_proposed for pool in pools_a) > 0


@torch.no_grad()
def token_logs(model, tokens: list[int], tau: float) -> tuple[list[float], list[float]]:
    logits = model(torch.tensor([PROMPT + tokens])).logits[0, len(PROMPT) - 1:-1].double()
    picked = torch.tensor(tokens)[:, None]
    return (torch.log_softmax(logits, -1).gather(1, picked)[:, 0].tolist(),
            torch.log_softmax(logits / tau, -1).gather(1, picked)[:, 0].tolist())


def test_an_mh_move_keeps_exact_samples_law(toy):
    """Draw exact samples of gamma(y) ∝ p(y)^alpha exp(lambda r(y)) over unfinished 2-token prefixes, move each once
    (proposals from q at tau != 1/alpha), and the law is still gamma (identity 7)."""
    model, tokenizer = toy
    alpha, tau, lam = 2.0, 0.7, 2.0
    prefixes = [list(y) for y in itertools.product(range(3), repeat=LENGTH)]
    logs = torch.tensor([alpha * log_p(model, tuple(y)) + lam * reward([0], [tokenizer.decode(y)])[0]
                         for y in prefixes], dtype=torch.float64)
    gamma = dict(zip(map(tuple, prefixes), torch.softmax(logs, 0).tolist()))
    generator = torch.Generator().manual_seed(5)
    picks = torch.multinomial(torch.softmax(logs, 0), 800, replacement=True, generator=generator).tolist()
    pool = particles.Pool([], torch.zeros(800, dtype=torch.float64))
    known = [token_logs(model, y, tau) for y in prefixes]
    for k in picks:
        lp, lq = known[k]
        pool.particles.append(particles.Particle(0, list(prefixes[k]), lp, lq,
                                                 log_psi=lam * reward([0], [tokenizer.decode(prefixes[k])])[0]))
    engine = Engine(model, tokenizer, Settings(max_new_tokens=8, alpha=alpha, tau=tau, lam=lam), reward, generator)
    engine.prompt_ids = [PROMPT]
    engine.move([(pool, p) for p in pool.particles])
    assert 0 < pool.mh_accepted < pool.mh_proposed == 800
    moved = [tuple(p.tokens) for p in pool.particles]
    assert chi_square_p(moved, gamma) > 1e-3
    for p in pool.particles[:20]:  # the moved particles' recorded log p / log q are the model's
        lp, lq = token_logs(model, p.tokens, tau)
        assert p.logp == pytest.approx(lp, abs=1e-5) and p.logq == pytest.approx(lq, abs=1e-5)


def test_a_final_move_keeps_pi_with_changing_lengths(toy):
    """Exact samples of pi(y) ∝ p(y)^alpha exp(lambda R(y)) over complete sequences (lengths 1 and 2: the cut-point
    term log(n / n') matters), each moved three times by the final sweep: the law is still pi. (Without the
    cut-point term the empty completion's share falls from 0.125 to about 0.08, which this detects.)"""
    model, tokenizer = toy
    alpha, tau, lam = 1.5, 0.8, 2.0
    law = exact(model, lam, alpha)
    ys = list(law)
    generator = torch.Generator().manual_seed(9)
    picks = torch.multinomial(torch.tensor(list(law.values())), 2000, replacement=True, generator=generator).tolist()
    pool = particles.Pool([], torch.zeros(2000, dtype=torch.float64))
    for k in picks:
        y = list(ys[k])
        lp, lq = token_logs(model, y, tau)
        r = reward([0], [tokenizer.decode(y)])[0]
        pool.particles.append(particles.Particle(0, y, lp, lq, finished=y[-1] == EOS, truncated=y[-1] != EOS,
                                                 log_psi=lam * r, reward=r))
    engine = Engine(model, tokenizer, Settings(max_new_tokens=LENGTH, alpha=alpha, tau=tau, lam=lam), reward,
                    generator)
    engine.prompt_ids = [PROMPT]
    before = [tuple(p.tokens) for p in pool.particles]
    for _ in range(3):
        engine.final_move([(pool, p) for p in pool.particles])
    moved = [tuple(p.tokens) for p in pool.particles]
    assert 0 < pool.mh_accepted < pool.mh_proposed == 6000
    assert sum(len(a) != len(b) for a, b in zip(before, moved)) > 200  # many moves changed the length
    assert chi_square_p(moved, law) > 1e-3, moved.count((EOS,)) / len(moved)
    for p in pool.particles:  # the flags and the reward follow the accepted sequence
        assert p.finished == (p.tokens[-1] == EOS) and p.truncated == (not p.finished)
        assert p.reward == reward([0], [tokenizer.decode(p.tokens)])[0]
