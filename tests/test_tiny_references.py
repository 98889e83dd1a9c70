"""Embedded tiny references of known preference quality (`embedded:tiny-pref:<tilt>`) and their tilted data."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from align.data.preferences import (
    VOCABULARY,
    WORDS_PER_RESPONSE,
    random_responses,
    response_truth,
    synthetic_preferences,
    tilted_responses,
)
from align.models import ModelLoadError, ensure_tiny_reference, load_causal_lm, load_tokenizer, resolve_model_path

TILTS = (2.0, 0.0, -1.0)


def vocabulary_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text) if w in VOCABULARY]


def mean_mu(texts: list[str]) -> float:
    return float(np.mean([response_truth(t)[0] for t in texts]))


# --- tilted_responses -----------------------------------------------------------------------------------------------


def test_tilted_responses_are_deterministic_sentences_of_distinct_words():
    first = tilted_responses(np.random.default_rng(3), 200, 1.5)
    assert first == tilted_responses(np.random.default_rng(3), 200, 1.5)
    assert first != tilted_responses(np.random.default_rng(4), 200, 1.5)
    for text in first:
        words = vocabulary_words(text)
        assert len(words) == len(set(words)) == WORDS_PER_RESPONSE
        assert re.fullmatch(r"It is [a-z]+, [a-z]+ and [a-z]+\.", text), text


def test_tilt_moves_the_true_mu():
    n = 2000
    good, flat, bad = (mean_mu(tilted_responses(np.random.default_rng(0), n, t)) for t in (3.0, 0.0, -3.0))
    assert good > 2.0 and bad < -2.0  # mu is in [-3, 3]; a strong tilt picks mostly the best (worst) words
    assert abs(flat) < 0.15  # tilt 0: qualities are symmetric around 0
    assert mean_mu(tilted_responses(np.random.default_rng(0), n, 0.5)) > flat + 0.5


def test_tilt_zero_draws_uniformly_like_random_responses():
    n = 3000
    counts = {}
    for texts in (tilted_responses(np.random.default_rng(1), n, 0.0), random_responses(np.random.default_rng(2), n)):
        words = [w for t in texts for w in vocabulary_words(t)]
        counts[len(counts)] = np.array([words.count(w) for w in VOCABULARY]) / n
    expected = WORDS_PER_RESPONSE / len(VOCABULARY)  # every word is in 1 response of 5
    for freq in counts.values():
        assert np.all(np.abs(freq - expected) < 0.04), freq


# --- the built references -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory):
    """One cache root holding every tilt in TILTS, each built once for this module."""
    root = tmp_path_factory.mktemp("tiny-pref")
    for tilt in TILTS:
        ensure_tiny_reference(tilt, root)
    return root


def response_logprobs(model, tokenizer, prompts: list[str], responses: list[str]) -> np.ndarray:
    """Per-token mean log-prob of each response as the assistant turn after its prompt (response tokens only:
    those after the generation-prompt rendering, end-of-turn tokens included)."""
    rows = []
    for prompt, response in zip(prompts, responses):
        messages = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=True, return_dict=True)["input_ids"]
        assert list(full[:len(head)]) == list(head)
        rows.append((list(full), len(head)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    # mask[i, t]: token t + 1 of row i is a response token (it is predicted from position t).
    mask = torch.tensor([[start <= t + 1 < len(row) for t in range(width - 1)] for row, start in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row, _ in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    token_logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return ((token_logprobs * mask).sum(1) / mask.sum(1)).numpy()


def preference_accuracy(path: str, num_pairs: int = 300) -> float:
    """Share of synthetic pairs (ties in true mu skipped) where the reference's length-normalised log-prob of the
    response with the higher true mu exceeds that of the other."""
    tokenizer, model = load_tokenizer(path), load_causal_lm(path, dtype="float32").eval()
    pairs = [r for r in synthetic_preferences(num_pairs, seed=7) if r["mu_chosen"] != r["mu_rejected"]]
    better = [r["chosen"] if r["mu_chosen"] > r["mu_rejected"] else r["rejected"] for r in pairs]
    worse = [r["rejected"] if r["mu_chosen"] > r["mu_rejected"] else r["chosen"] for r in pairs]
    prompts = [r["prompt"] for r in pairs]
    return float(np.mean(response_logprobs(model, tokenizer, prompts, better)
                         > response_logprobs(model, tokenizer, prompts, worse)))


def test_references_are_ordered_by_tilt(reference_root):
    # Measured: 0.862, 0.481 and 0.138 (0.5: 0.646). A perfect tilted model would reach 0.914, 0.526, 0.168: tilt 0
    # is not exactly 0.5 because better words are longer on average, which length normalisation rewards.
    accuracy = {tilt: preference_accuracy(str(ensure_tiny_reference(tilt, reference_root))) for tilt in TILTS}
    assert accuracy[2.0] > 0.75, accuracy
    assert 0.4 < accuracy[0.0] < 0.6, accuracy
    assert accuracy[-1.0] < 0.35, accuracy


def test_same_tilt_builds_identical_weights(reference_root, tmp_path):
    threads, rng_state = torch.get_num_threads(), torch.random.get_rng_state()
    again = ensure_tiny_reference(2, tmp_path)
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), rng_state)
    first = ensure_tiny_reference(2.0, reference_root)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (first, again)]
    assert digest[0] == digest[1]
    assert again.name == first.name and "tilt2.0" in again.name


def test_resolve_model_path_builds_and_caches_references(reference_root, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(reference_root))
    path = resolve_model_path("embedded:tiny-pref:2")
    assert Path(path).parent == reference_root and (Path(path) / "model.safetensors").exists()
    assert resolve_model_path("embedded:tiny-pref:2.0") == resolve_model_path("embedded:tiny-pref:2e0") == path
    assert resolve_model_path("embedded:tiny-pref:-0") == resolve_model_path("embedded:tiny-pref:0")


@pytest.mark.parametrize("name", ["embedded:tiny-pref:", "embedded:tiny-pref:abc", "embedded:tiny-pref:nan",
                                  "embedded:tiny-pref:inf", "embedded:other", "embedded:tiny-pref"])
def test_malformed_embedded_names_name_the_valid_forms(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path))
    forms = r"'embedded:tiny', 'embedded:smollm2-135m-instruct' and 'embedded:tiny-pref:<float tilt>'"
    with pytest.raises(ModelLoadError, match=forms):
        resolve_model_path(name)
    assert not any(tmp_path.iterdir()), "nothing is built for a bad name"


def test_non_finite_tilt_is_refused(tmp_path):
    with pytest.raises(ValueError, match="tilt must be a finite number"):
        ensure_tiny_reference(float("nan"), tmp_path)
