"""The generation helper (`align.generation`) on the embedded tiny model: prompt rendering as TRL's rollouts do it,
greedy determinism, seeded sampling, several sequences per prompt, stop tokens and token counts, and the trainer's
model unwrapped for generation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LogitsProcessor

from align.generation import (
    Decoding,
    Generated,
    chat_prompt_ids,
    fill_to,
    generate,
    generation_model,
    sampling_kwargs,
    stop_token_ids,
)
from align.models import TINY, load_causal_lm, load_tokenizer, resolve_model_path

PROMPTS = [[{"role": "user", "content": "What is 12 + 30?"}], [{"role": "user", "content": "Say hi"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to three, please."}]]


@pytest.fixture(scope="module")
def tiny():
    path = resolve_model_path(TINY)
    return load_causal_lm(path, dtype="float32").eval(), load_tokenizer(path)


class ForceTokens(LogitsProcessor):
    """Makes the token at step t of row r `choose(r, t, input_ids[r])`: every other token gets -inf, so greedy
    decoding and sampling alike pick it."""

    def __init__(self, prompt_width: int, choose):
        self.prompt_width, self.choose = prompt_width, choose

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_width
        forced = torch.full_like(scores, -torch.inf)
        for row in range(scores.shape[0]):
            forced[row, self.choose(row, step, input_ids[row].tolist())] = 0.0
        return forced


def test_prompts_are_tokenized_as_trls_rollouts_tokenize_them(tiny):
    """SAGE's hint requests and hinted groups go through `chat_prompt_ids`: they must read the tokens TRL's own
    rollouts read for the same prompts."""
    from trl import GRPOTrainer

    _, tokenizer = tiny
    trainer = SimpleNamespace(_is_vlm=False, environment_factories=None, processing_class=tokenizer, tools=None,
                              chat_template=None, chat_template_kwargs={})
    for prompts in (PROMPTS, ["plain text 1 + 2 =", "another prompt"]):
        expected, _, _ = GRPOTrainer._tokenize_prompts(trainer, prompts)
        assert chat_prompt_ids(tokenizer, prompts) == [list(ids) for ids in expected]
    assert chat_prompt_ids(tokenizer, []) == []
    rendered = tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)
    assert chat_prompt_ids(tokenizer, PROMPTS[:1]) == [tokenizer(rendered, add_special_tokens=False)["input_ids"]]


def test_greedy_is_deterministic_and_independent_of_batching(tiny):
    model, tokenizer = tiny
    ids = chat_prompt_ids(tokenizer, PROMPTS)
    decoding = Decoding(max_new_tokens=12)
    batched = generate(model, tokenizer, ids, decoding)
    assert generate(model, tokenizer, ids, decoding) == batched
    # Left padding: a prompt decodes the same alone as beside longer ones.
    assert [generate(model, tokenizer, [p], decoding).completion_ids[0] for p in ids] == batched.completion_ids


def test_sampling_is_reproducible_under_a_seed_and_leaves_the_global_rng_alone(tiny):
    model, tokenizer = tiny
    ids = chat_prompt_ids(tokenizer, PROMPTS[:2])
    decoding = Decoding(max_new_tokens=12, temperature=1.0, num_return_sequences=3)
    state = torch.get_rng_state()
    first = generate(model, tokenizer, ids, decoding, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert generate(model, tokenizer, ids, decoding, seed=7) == first
    assert generate(model, tokenizer, ids, decoding, seed=8) != first

    generator = torch.Generator().manual_seed(3)
    draws = [generate(model, tokenizer, ids, decoding, seed=generator) for _ in range(2)]
    assert draws[0] != draws[1], "a generator gives every call its own seed"
    again = torch.Generator().manual_seed(3)
    assert [generate(model, tokenizer, ids, decoding, seed=again) for _ in range(2)] == draws
    assert torch.equal(torch.get_rng_state(), state)

    torch.manual_seed(11)  # seed=None: the global RNG drives the sampling
    unseeded = generate(model, tokenizer, ids, decoding)
    torch.manual_seed(11)
    assert generate(model, tokenizer, ids, decoding) == unseeded


def test_several_sequences_per_prompt_come_prompt_major(tiny):
    """Each row's first token repeats its prompt's last token, so the rows show which prompt they belong to."""
    model, tokenizer = tiny
    ids = [[40, 41, 42], [50, 51]]
    force = ForceTokens(3, lambda row, step, seq: seq[-1])
    out = generate(model, tokenizer, ids, Decoding(max_new_tokens=4, temperature=1.0, num_return_sequences=3),
                   seed=0, logits_processors=[force])
    assert out.completion_ids == [[42] * 4] * 3 + [[51] * 4] * 3
    assert out.finished == [False] * 6 and out.num_tokens == 24


def test_a_row_stops_at_its_first_stop_token_and_counts_only_its_own_tokens(tiny):
    """Row 0 emits EOS at step 2 and is then padded by generate: its completion ends at the EOS, marked finished;
    row 1 never stops and runs to max_new_tokens."""
    model, tokenizer = tiny
    eos, word = tokenizer.eos_token_id, tokenizer("a", add_special_tokens=False)["input_ids"][0]
    ids = chat_prompt_ids(tokenizer, PROMPTS[:2])
    width = max(len(p) for p in ids)
    force = ForceTokens(width, lambda row, step, seq: eos if row == 0 and step == 2 else word)
    out = generate(model, tokenizer, ids, Decoding(max_new_tokens=6), logits_processors=[force])
    assert out.completion_ids == [[word, word, eos], [word] * 6]
    assert out.finished == [True, False]
    assert out.num_tokens == 9
    assert out.texts(tokenizer) == ["aa", "a" * 6]


def test_stop_tokens_are_the_tokenizers_eos_and_the_models():
    tokenizer = SimpleNamespace(eos_token_id=2)

    def model(eos):
        return SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))

    assert stop_token_ids(model(2), tokenizer) == [2]
    assert stop_token_ids(model(None), tokenizer) == [2]
    assert stop_token_ids(model([5, 6]), tokenizer) == [2, 5, 6]
    assert stop_token_ids(model(5), SimpleNamespace(eos_token_id=None)) == [5]


def test_decoding_settings():
    assert sampling_kwargs(0) == {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                                  "min_p": None}
    assert sampling_kwargs(0.7) == {"do_sample": True, "temperature": 0.7}
    assert Decoding(8, temperature=1.0, top_p=0.9, num_return_sequences=4).generate_kwargs() == {
        "max_new_tokens": 8, "num_return_sequences": 4, "do_sample": True, "temperature": 1.0, "top_p": 0.9,
        "top_k": 0}
    assert Decoding(8).generate_kwargs()["do_sample"] is False
    assert fill_to([1, 2], 4, 9) == [1, 2, 9, 9] and fill_to([1, 2], 2, 9) == [1, 2]
    assert Generated([[1, 2], []], [True, False]).num_tokens == 2


def test_generation_model_unwraps_the_trainers_model_and_restores_its_mode(tiny):
    from accelerate import Accelerator

    model, tokenizer = tiny
    model.activation_checkpointing_enable()
    model.train()
    trainer = SimpleNamespace(model=model, accelerator=Accelerator(cpu=True),
                              args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    try:
        with generation_model(trainer) as unwrapped:
            assert unwrapped is model and not model.training and not model.is_activation_checkpointing
            out = generate(unwrapped, tokenizer, chat_prompt_ids(tokenizer, PROMPTS[:1]), Decoding(max_new_tokens=3))
            assert len(out.completion_ids) == 1
        assert model.training and model.is_activation_checkpointing
    finally:
        model.activation_checkpointing_disable()
        model.eval()
