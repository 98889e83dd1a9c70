"""SAGE and SAGE-LIGHT on the tiny model: the real trainer, hints written by the policy itself.

The `hint_writer` fixture (conftest) is a tiny policy taught to write one constant hint JSON. A reward that never
succeeds then collapses every group, which makes the schedule's behaviour exact: SAGE escalates every group to
level 3, SAGE-LIGHT raises every level by one per epoch.
"""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf
from transformers import TrainerCallback

from align.config import RewardSourceConfig
from align.data import rows_to_dataset
from align.methods.sage.config import SAGEAlgorithmConfig
from align.methods.sage.trainer import STATE_FILE, build_sage_trainer
from align.rollout import prompt_key
from tests.conftest import SAGE_TEMPLATES, compose, sage_rows


def make_trainer(model_path: str, out, *, schedule="sage", reward="tests.methods.sage_rewards:never",
                 rows=None, max_steps=2, save_steps=0, peft_config=None, **algo_overrides):
    from align.methods.common import training_arguments
    from align.models import load_causal_lm, load_tokenizer
    from align.rewards import build_reward_sources

    cfg = compose(["algorithm=sage", "trainer=cpu", f"trainer.output_dir={out}", f"trainer.max_steps={max_steps}",
                   "trainer.per_device_train_batch_size=8", f"trainer.save_steps={save_steps}", "trainer.seed=0",
                   "algorithm.num_generations=4", "algorithm.max_completion_length=16", *SAGE_TEMPLATES])
    config = OmegaConf.to_object(cfg)
    algo: SAGEAlgorithmConfig = config.algorithm
    algo.schedule = schedule
    for key, value in algo_overrides.items():
        setattr(algo, key, value)
    rewards, weights = build_reward_sources([RewardSourceConfig(name=reward)])
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    common = training_arguments(config, out, [], "sage-test")
    dataset = rows_to_dataset(rows if rows is not None else sage_rows(16, seed=1))
    return build_sage_trainer(model, tokenizer, dataset, rewards, weights, algo, common, peft_config=peft_config)


def logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_policy_writes_the_hint_it_was_taught(hint_writer, tmp_path):
    trainer = make_trainer(hint_writer, tmp_path / "run")
    trainer._rows = [{"prompt": [{"role": "user", "content": "Compute 12+34."}], "solution": "2+4=6; 1+3=4. "
                      "Answer: \\boxed{46}", "answer": "46"}] * 4
    counts = dict.fromkeys(("hints_requested", "hints_parsed", "hints_failed", "hints_leaked"), 0)
    hints = trainer._write_hints([0], [r["prompt"] for r in trainer._rows], counts)
    assert hints == {0: ["one", "two", "three"]}, counts
    assert counts == {"hints_requested": 1, "hints_parsed": 1, "hints_failed": 0, "hints_leaked": 0}


def test_sage_escalates_collapsed_groups_to_level_3_and_the_loss_sees_hinted_prompts(hint_writer, tmp_path):
    trainer = make_trainer(hint_writer, tmp_path / "run")
    seen = []
    compute_loss = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert len(seen) == 2
    for batch in seen:
        texts = trainer.processing_class.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
        # Every group collapsed and never recovered, so every group ends at level 3, whole: all 8 rows (2 groups
        # of 4) carry the level-3 hint, which the policy wrote itself.
        assert all("Hint: three" in t for t in texts), texts
        assert batch["prompt_ids"].shape[0] == 8
    assert logged(trainer, "sage/collapsed_frac_before") == [1.0, 1.0]
    assert logged(trainer, "sage/collapsed_frac_after") == [1.0, 1.0]
    assert logged(trainer, "sage/level_3_frac") == [1.0, 1.0]
    assert logged(trainer, "sage/hints_requested") == [2.0, 2.0]
    assert logged(trainer, "sage/hints_parsed") == [2.0, 2.0]
    assert logged(trainer, "groups/never_solved_frac") == [1.0, 1.0]
    assert all(t > 0 for t in logged(trainer, "timing/hint_writing_s") + logged(trainer, "timing/hinted_rollout_s"))
    hints = [json.loads(line) for line in (tmp_path / "run" / "hints-rank0.jsonl").read_text().splitlines()]
    assert len(hints) == 4 and all(h["hint"] == ["one", "two", "three"] and h["level"] == 3 for h in hints)


def test_group_diagnostics_count_successes_at_sages_threshold(hint_writer, tmp_path):
    """Reward 0.5 everywhere with success_threshold 0.7: no completion succeeds, so every group collapses, and the
    solved / never-solved diagnostics agree with SAGE's collapse test rather than with 'reward > 0'."""
    trainer = make_trainer(hint_writer, tmp_path / "run", reward="tests.methods.sage_rewards:half", max_steps=1,
                           success_threshold=0.7)
    trainer.train()
    assert logged(trainer, "sage/collapsed_frac_before") == [1.0]
    assert logged(trainer, "groups/solved_frac") == [0.0]
    assert logged(trainer, "groups/never_solved_frac") == [1.0]


def test_escalation_stops_per_group_and_rows_stay_with_their_group(hint_writer, tmp_path):
    """One group succeeds at its level-1 re-roll, the other never: the loss batch holds the first group at level 1 and
    the second at level 3, and each row's reward is its own group's."""
    import tests.methods.sage_rewards as module

    module.second_look = module.SecondLook()
    trainer = make_trainer(hint_writer, tmp_path / "run", reward="tests.methods.sage_rewards:second_look",
                           max_steps=1)
    batches = []
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda model, inputs, *a, **k: batches.append(inputs) or compute_loss(model, inputs, *a, **k)
    trainer.train()
    target = module.second_look.target
    texts = trainer.processing_class.batch_decode(batches[0]["prompt_ids"], skip_special_tokens=True)
    # TRL shuffles the generation batch before the loss; group membership is recovered from the question text.
    levels = {"Hint: one": 1, "Hint: three": 3}
    for text in texts:
        level = next(v for k, v in levels.items() if k in text)
        assert level == (1 if target in text else 3), text
    assert sum(target in t for t in texts) == 4
    assert logged(trainer, "sage/level_1_frac") == [0.5] and logged(trainer, "sage/level_3_frac") == [0.5]
    assert logged(trainer, "sage/collapsed_frac_before") == [1.0]
    assert logged(trainer, "sage/collapsed_frac_after") == [0.5]
    assert logged(trainer, "sage/reward_before") == [0.0] and logged(trainer, "sage/reward_after") == [0.5]
    # rewards as TRL logged them for the loss batch (unshuffled order): the target's rows, and only they, scored 1
    (name,) = trainer._logs["rewards"]
    for prompt, reward in zip(trainer._logs["prompt"], trainer._logs["rewards"][name], strict=True):
        assert reward == float(prompt[-1]["content"] == target)


def test_rewards_are_scored_on_the_unhinted_prompt(hint_writer, tmp_path):
    """The reward sees the dataset's prompt, never the hinted one, and is called once per completion kept."""
    import tests.methods.sage_rewards as module

    calls = []

    def recording(prompts, completions, **kwargs):
        calls.extend(p[-1]["content"] for p in prompts)
        return [0.0] * len(completions)

    module.recording = recording
    try:
        trainer = make_trainer(hint_writer, tmp_path / "run", reward="tests.methods.sage_rewards:recording",
                               max_steps=1)
        trainer.train()
    finally:
        del module.recording
    assert calls and not any("Hint:" in c for c in calls)
    # probe (8) + three escalation rounds (8 each); TRL does not score the final batch again
    assert len(calls) == 8 * 4


def test_rows_without_a_reference_solution_are_never_hinted(hint_writer, tmp_path):
    rows = sage_rows(16, seed=1)
    for row in rows:
        row["solution"] = ""
    trainer = make_trainer(hint_writer, tmp_path / "run", rows=rows, max_steps=1)
    trainer.train()
    assert logged(trainer, "sage/hints_requested") == [0.0]
    assert logged(trainer, "sage/level_0_frac") == [1.0]


def light_run(hint_writer, out, max_steps, resume_from=None, save_steps=0, rule="paper"):
    rows = sage_rows(4, seed=2)  # 4 prompts, 2 groups per step: an epoch every 2 steps
    trainer = make_trainer(hint_writer, out, schedule="sage_light", rows=rows, max_steps=max_steps,
                           save_steps=save_steps, light_rule=rule)
    restored = {}

    class Capture(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            restored.update(trainer.hint_state.state_dict())

    trainer.add_callback(Capture())
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, restored, [prompt_key(r["prompt"]) for r in rows]


def test_sage_light_raises_levels_per_epoch_and_resumes_its_level_map(hint_writer, tmp_path):
    full, _, keys = light_run(hint_writer, tmp_path / "full", max_steps=4, save_steps=2)
    # epoch 1: level 0 for all, p = 0 < alpha -> 1; epoch 2: hinted at level 1, p = 0 -> 2
    assert full.hint_state.levels == dict.fromkeys(keys, 2)
    assert logged(full, "sage/level_0_frac") == [1.0, 1.0, 0.0, 0.0]
    assert logged(full, "sage/level_1_frac") == [0.0, 0.0, 1.0, 1.0]
    assert logged(full, "sage/hints_requested") == [0.0, 0.0, 2.0, 2.0]
    assert set(full.hint_state.last_hints) == set(keys)

    saved = json.loads((tmp_path / "full" / "checkpoint-2" / STATE_FILE).read_text())
    assert saved["levels"] == dict.fromkeys(keys, 1)
    resumed, restored, _ = light_run(hint_writer, tmp_path / "full", max_steps=4,
                                     resume_from=str(tmp_path / "full" / "checkpoint-2"))
    assert restored["levels"] == saved["levels"]
    assert resumed.hint_state.levels == full.hint_state.levels
    assert logged(resumed, "sage/level_1_frac")[-2:] == [1.0, 1.0]


def test_sage_light_bidirectional_rule_lowers_levels_of_solved_prompts(hint_writer, tmp_path):
    rows = sage_rows(4, seed=2)
    trainer = make_trainer(hint_writer, tmp_path / "run", schedule="sage_light", rows=rows, max_steps=2,
                           reward="tests.methods.sage_rewards:always", light_rule="bidirectional")
    for row in rows:
        trainer.hint_state.levels[prompt_key(row["prompt"])] = 2
    trainer.train()
    # every group succeeds (p = 1 > alpha): each level drops by one
    assert trainer.hint_state.levels == {prompt_key(r["prompt"]): 1 for r in rows}
    assert logged(trainer, "sage/level_2_frac") == [1.0, 1.0]


def test_sage_with_a_lora_adapter_writes_hints_through_the_peft_model(hint_writer, tmp_path):
    from peft import LoraConfig, PeftModel

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(hint_writer, tmp_path / "run", max_steps=1, peft_config=lora)
    assert isinstance(trainer.model, PeftModel)
    trainer.train()
    # a fresh adapter starts as the identity, so the policy still writes the hint it was taught
    assert logged(trainer, "sage/hints_parsed") == [2.0] and logged(trainer, "sage/level_3_frac") == [1.0]


def mixed_length_batch(tokenizer) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Four (prompt, completion) rows, two of them with long hinted prompts: (ids, mask, prompt width, completion
    width), left-padded prompts then right-padded completions as TRL batches them."""
    from align.tokens import chat_ids

    pad = tokenizer.pad_token_id
    questions = ["Compute 12+34.", "Compute 5+6.\nHint: " + "add the ones first, then the tens; " * 4,
                 "Compute 70+8.", "Compute 41+41.\nHint: " + "no carry here; " * 6]
    prompts = [chat_ids(tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    completions = [tokenizer(text)["input_ids"] for text in ("2+4=6; 1+3=4.", "11", "0+8=8; 7+0=7. Answer: 78", "82")]
    width, length = max(map(len, prompts)), max(map(len, completions))
    ids = torch.tensor([[pad] * (width - len(p)) + p + c + [pad] * (length - len(c))
                        for p, c in zip(prompts, completions)])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c))
                         for p, c in zip(prompts, completions)])
    return ids, mask, width, length


def forward_shapes(trainer, call) -> list[tuple[int, int]]:
    shapes = []
    hook = trainer.model.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        call()
    finally:
        hook.remove()
    return shapes


def test_the_loss_forwards_short_and_long_prompts_separately_with_the_same_logprobs(hint_writer, tmp_path):
    """Hinted prompts are long: in the loss the log-probs are computed in two buckets cut to their own width, and
    equal TRL's whole-batch forward on every completion token."""
    from align.methods.grpo.trainer import AlignGRPOTrainer

    trainer = make_trainer(hint_writer, tmp_path / "run")
    assert trainer._shift_invariant  # Qwen2's rotary positions
    ids, mask, width, length = mixed_length_batch(trainer.processing_class)
    results = {}
    trainer._split_by_length = True  # as compute_loss sets it when the rollout computed no old log-probs
    split = forward_shapes(trainer, lambda: results.update(split=trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, mask, length, compute_entropy=True)))
    whole = forward_shapes(trainer, lambda: results.update(whole=AlignGRPOTrainer._get_per_token_logps_and_entropies(
        trainer, trainer.model, ids, mask, length, compute_entropy=True)))
    (rows_a, width_a), (rows_b, width_b) = split
    assert rows_a + rows_b == 4 and whole == [(4, width + length)]
    assert width_a < width + length == width_b  # the short prompts' bucket lost the long prompts' padding
    real = mask[:, width:].bool()
    (logps, entropies, _), (expected, expected_entropies, _) = results["split"], results["whole"]
    torch.testing.assert_close(logps[real], expected[real].detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropies[real], expected_entropies[real], atol=1e-5, rtol=1e-5)
    logps[real].sum().backward()  # gradients flow through the buckets
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)


def test_only_the_losss_own_forward_is_split_and_only_when_it_saves(hint_writer, tmp_path):
    trainer = make_trainer(hint_writer, tmp_path / "run")
    ids, mask, width, length = mixed_length_batch(trainer.processing_class)
    full = (4, width + length)

    def shapes(ids, mask, **kwargs):
        return forward_shapes(trainer, lambda: trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                                                         length, **kwargs))

    assert shapes(ids, mask) == [full]  # outside compute_loss (or with old log-probs from the rollout)
    trainer._split_by_length = True
    assert shapes(ids, mask, batch_size=4) == [full]  # the rollout's chunked forwards keep TRL's padding
    with torch.no_grad():
        assert shapes(ids, mask) == [full]
    even = mask.clone()
    even[:, :width] = 1  # every prompt as long as the longest: nothing to save
    assert shapes(ids, even) == [full]
    assert len(shapes(ids, mask)) == 2


def test_position_shift_invariance_is_read_from_the_config():
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    from align.models import position_shift_invariant

    assert position_shift_invariant(Qwen2Config()) and position_shift_invariant(LlamaConfig())
    assert position_shift_invariant(LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                              "original_max_position_embeddings": 8192,
                                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0}))
    assert not position_shift_invariant(LlamaConfig(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))
    assert not position_shift_invariant(GPT2Config())  # absolute position embeddings
