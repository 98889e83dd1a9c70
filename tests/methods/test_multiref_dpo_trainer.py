"""Multi-reference DPO against TRL and the reference cache: with K = 1 the loss and gradients are TRL's DPO
(same normalisation), the cached reference log-probs are what TRL computes itself, the cache hits and misses as
its fingerprint says, and a reference with another chat template scores with its own."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from align.checkpoints import CheckpointStateError
from align.data.preferences import synthetic_preferences
from align.methods.multiref_dpo.config import MultiRefDPOAlgorithmConfig, ReferenceModelConfig
from align.methods.multiref_dpo.references import ReferenceLogps, pair_token_ids, reference_logps
from align.methods.multiref_dpo.trainer import (
    build_multiref_dpo_trainer,
    pairs_dataset,
    tokenize_pairs_dropping_long,
)
from align.models import TINY, load_causal_lm, load_tokenizer, resolve_model_path

BETA = 0.5


def score(reference: ReferenceModelConfig, rows: list[dict], **kwargs) -> ReferenceLogps:
    """One split's log-probs under `reference` (from the cache or computed)."""
    return reference_logps(reference, {"train": rows}, **kwargs)["train"]


def preference_rows(n: int, seed: int = 3) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in synthetic_preferences(n, seed=seed)]


def common_args(tmp_path: Path, **extra) -> dict:
    return dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, report_to=[], bf16=False,
                dataloader_pin_memory=False,
                learning_rate=1e-3, max_steps=1, logging_steps=1, save_strategy="no", seed=0,
                remove_unused_columns=False, dataloader_num_workers=0, **extra)


def our_trainer(tmp_path, rows, references, *, normalize: bool, loss: str = "mdpo", weighting: str = "uniform"):
    tokenizer = load_tokenizer(TINY)
    rows, ids, _ = tokenize_pairs_dropping_long(tokenizer, rows, 512)
    scored = [score(r, rows, normalize=normalize, batch_size=3, cache_dir=tmp_path / "cache")
              for r in references]
    algo = MultiRefDPOAlgorithmConfig(references=[r.path for r in references], loss=loss, weighting=weighting,
                                      beta=BETA, length_normalize=normalize, validation_size=0)
    model = load_causal_lm(TINY, dtype="float32")
    trainer = build_multiref_dpo_trainer(model, tokenizer, pairs_dataset(ids, scored), algo,
                                         [f"ref{k}" for k in range(len(references))], common_args(tmp_path))
    return trainer, model


def trl_trainer(tmp_path, rows, *, normalize: bool, ref_model=None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list([{"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    args = DPOConfig(**common_args(tmp_path / "trl"), beta=BETA, max_length=None, precompute_ref_log_probs=True,
                     loss_type=["sigmoid_norm" if normalize else "sigmoid"])
    model = load_causal_lm(TINY, dtype="float32")
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                      processing_class=load_tokenizer(TINY)), model


def first_batch(trainer, n: int = 4) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))


@pytest.mark.parametrize("loss", ["mrpo", "mdpo"])
@pytest.mark.parametrize("normalize", [True, False])
def test_one_reference_is_trl_dpo_in_loss_and_gradients(tmp_path, loss, normalize):
    """A reference that differs from the policy: our cache, tokenization and loss against TRL's own precompute and
    DPO loss (sigmoid_norm = length-normalised, sigmoid = sums)."""
    rows = preference_rows(8)
    reference = perturbed_copy(tmp_path)
    ours, our_model = our_trainer(tmp_path, rows, [ReferenceModelConfig(path=reference)], normalize=normalize,
                                  loss=loss)
    trl, trl_model = trl_trainer(tmp_path, rows, normalize=normalize,
                                 ref_model=load_causal_lm(reference, dtype="float32"))
    our_inputs, trl_inputs = first_batch(ours), first_batch(trl)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(our_inputs[key], trl_inputs[key]), key
    lengths = our_inputs["completion_mask"].sum(dim=1).chunk(2)
    scale = (lengths[0], lengths[1]) if normalize else (1, 1)
    torch.testing.assert_close(our_inputs["ref_chosen_logps"][:, 0] * scale[0], trl_inputs["ref_chosen_logps"])
    torch.testing.assert_close(our_inputs["ref_rejected_logps"][:, 0] * scale[1], trl_inputs["ref_rejected_logps"])

    ours.weighting.begin_step()
    our_loss = ours.compute_loss(our_model, our_inputs)
    trl_loss = trl.compute_loss(trl_model, trl_inputs)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert abs(our_loss.item() - math.log(2)) > 1e-4  # real reference margins (float32 noise here is ~1e-7)
    our_loss.backward()
    trl_loss.backward()
    for (name, ours_p), trl_p in zip(our_model.named_parameters(), trl_model.parameters()):
        torch.testing.assert_close(ours_p.grad, trl_p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_cache_hits_on_rerun_without_loading_the_model(tmp_path, monkeypatch):
    rows, reference = preference_rows(6), ReferenceModelConfig(path=TINY)
    first = score(reference, rows, normalize=True, batch_size=4, cache_dir=tmp_path)
    assert not first.cache_hit and first.cache_file.is_file()

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit must not load the reference")

    monkeypatch.setattr("align.models.load_causal_lm", no_model)
    again = score(reference, rows, normalize=True, batch_size=2, cache_dir=tmp_path)
    assert again.cache_hit and again.cache_file == first.cache_file
    assert torch.equal(again.chosen, first.chosen) and torch.equal(again.rejected, first.rejected)


def perturbed_copy(tmp_path: Path) -> str:
    """The tiny model with one weight changed, in its own directory."""
    target = tmp_path / "perturbed"
    if target.is_dir():
        return str(target)
    shutil.copytree(resolve_model_path(TINY), target)
    model = load_causal_lm(str(target), dtype="float32")
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(target, safe_serialization=True)
    return str(target)


OTHER_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}### assistant: {% endif %}")


def test_cache_misses_when_any_fingerprint_part_changes(tmp_path):
    rows, base = preference_rows(6), ReferenceModelConfig(path=TINY)
    baseline = score(base, rows, normalize=True, batch_size=4, cache_dir=tmp_path / "c")
    variants = {
        "model": (ReferenceModelConfig(path=perturbed_copy(tmp_path)), rows, True),
        "tokenizer": (ReferenceModelConfig(path=TINY, chat_template=OTHER_TEMPLATE), rows, True),
        "data": (base, preference_rows(6, seed=4), True),
        "normalization": (base, rows, False),
    }
    files = {baseline.cache_file}
    for part, (reference, data, normalize) in variants.items():
        result = score(reference, data, normalize=normalize, batch_size=4, cache_dir=tmp_path / "c")
        assert not result.cache_hit, part
        assert result.cache_file not in files, part
        assert not torch.equal(result.chosen, baseline.chosen), part
        files.add(result.cache_file)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 5


def test_reference_with_another_chat_template_scores_its_own_rendering(tmp_path):
    """A reference whose tokenizer renders chats differently: its cached log-probs are its model's probability of
    the response tokens *in its own rendering*, computed here by hand from full logits."""
    directory = tmp_path / "other-family"
    shutil.copytree(resolve_model_path(TINY), directory)
    tokenizer = load_tokenizer(str(directory))
    tokenizer.chat_template = OTHER_TEMPLATE
    tokenizer.save_pretrained(directory)
    rows = preference_rows(4)
    cached = score(ReferenceModelConfig(path=str(directory)), rows, normalize=True, batch_size=3,
                             cache_dir=tmp_path / "c")
    model = load_causal_lm(str(directory), dtype="float32").eval()
    for i, row in enumerate(rows):
        prompt_text = f"### user: {row['prompt'][0]['content']}\n### assistant: "
        for side, value in (("chosen", cached.chosen[i]), ("rejected", cached.rejected[i])):
            context = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            full = tokenizer(prompt_text + row[side] + "\n", add_special_tokens=False)["input_ids"]
            assert full[:len(context)] == context
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits[0].double()
            logps = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(full[1:])[:, None])[:, 0]
            expected = logps[len(context) - 1:].mean()
            assert value.item() == pytest.approx(expected.item(), abs=1e-5), (i, side)
    policy_view = score(ReferenceModelConfig(path=TINY), rows, normalize=True, batch_size=3,
                                  cache_dir=tmp_path / "c")
    assert not torch.allclose(policy_view.chosen, cached.chosen)


def test_pair_token_ids_split_prompt_and_responses():
    tokenizer = load_tokenizer(TINY)
    ids = pair_token_ids(tokenizer, [{"role": "user", "content": "hi"}], "yes", "no")
    assert tokenizer.decode(ids["prompt_ids"]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(ids["chosen_ids"]) == "yes<|im_end|>\n"
    assert tokenizer.decode(ids["rejected_ids"]) == "no<|im_end|>\n"


def test_tokenize_pairs_drops_pairs_over_max_length():
    tokenizer = load_tokenizer(TINY)
    rows = preference_rows(5)
    rows[2] = {**rows[2], "rejected": "x" * 400}
    kept, ids, dropped = tokenize_pairs_dropping_long(tokenizer, rows, 200)
    assert dropped == 1 and len(kept) == len(ids) == 4 and rows[2] not in kept


# --- training state: logged every step, checkpointed, restored on resume -----------------------------------------

def small_run(tmp_path: Path, weighting: str, **args):
    """A tsw / swcw trainer on 48 training and 16 validation pairs, two references (the tiny model and a perturbed
    copy), batches of 4."""
    rows = preference_rows(64, seed=5)
    tokenizer = load_tokenizer(TINY)
    rows, ids, _ = tokenize_pairs_dropping_long(tokenizer, rows, 512)
    references = [ReferenceModelConfig(path=TINY), ReferenceModelConfig(path=perturbed_copy(tmp_path))]
    splits = {"train": list(range(48)), "validation": list(range(48, 64))}
    datasets = {}
    for name, idx in splits.items():
        scored = [score(r, [rows[i] for i in idx], normalize=True, batch_size=16,
                                  cache_dir=tmp_path / "cache") for r in references]
        datasets[name] = pairs_dataset([ids[i] for i in idx], scored)
    algo = MultiRefDPOAlgorithmConfig(references=["a", "b"], weighting=weighting, beta=BETA, validation_size=16,
                                      bandit_pairs=8, prior=1.0)
    model = load_causal_lm(TINY, dtype="float32")
    common = {**common_args(tmp_path), **args}
    return build_multiref_dpo_trainer(model, tokenizer, datasets["train"], algo, ["a", "b"], common,
                                      validation=datasets["validation"])


@pytest.mark.parametrize("weighting, accumulation", [("tsw", 1), ("swcw_onehot", 1), ("tsw", 2)])
def test_strategy_state_is_logged_checkpointed_and_restored_on_resume(tmp_path, weighting, accumulation):
    """One strategy step per optimizer step (also with gradient accumulation); a resumed run ends where an
    uninterrupted one does, strategy state and weights alike."""
    args = {"max_steps": 4, "learning_rate": 5e-3, "gradient_accumulation_steps": accumulation}
    straight = small_run(tmp_path / "straight", weighting, **args)
    straight.train()
    history = [e for e in straight.state.log_history if "loss" in e]
    assert len(history) == 4
    assert all(e["weights/a"] + e["weights/b"] == pytest.approx(1.0) for e in history)
    if weighting == "tsw":
        assert all("arm" in e and "bandit/reward" in e and "bandit/mean_a" in e for e in history)
        assert [int(e["arm"]) for e in history] == [arm for arm, _ in straight.weighting.history]
        assert [e["weights/a"] for e in history] == [float(arm == 0) for arm, _ in straight.weighting.history]
    else:  # the first step has no history yet (uniform), every later one trains on one reference
        assert history[0]["weights/a"] == 0.5 and all("arm" in e for e in history[1:])

    interrupted = small_run(tmp_path / "resumed", weighting, **args, save_strategy="steps", save_steps=2)
    interrupted.train()
    checkpoint = tmp_path / "resumed" / "run" / "checkpoint-2"
    assert (checkpoint / "multiref_state.json").is_file()
    resumed = small_run(tmp_path / "resumed", weighting, **args)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.algorithm_state() == straight.algorithm_state()
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q)


def test_swcw_weights_in_training_come_only_from_earlier_steps(tmp_path):
    """With a window longer than the run the strategy keeps every step's mean |Delta|: the weights logged for step t
    must be the normalised mean of steps 1 .. t-1, never including step t's own margins."""
    trainer = small_run(tmp_path, "swcw", max_steps=4)
    trainer.weighting.history = type(trainer.weighting.history)(maxlen=10)
    trainer.train()
    logged = [e["weights/a"] for e in trainer.state.log_history if "loss" in e]
    means = torch.tensor(list(trainer.weighting.history), dtype=torch.float64)  # (4 steps, 2 references)
    assert logged[0] == 0.5
    for step in range(1, 4):
        earlier = means[:step].mean(dim=0)
        assert logged[step] == pytest.approx((earlier[0] / earlier.sum()).item(), rel=1e-6)
        with_own = means[:step + 1].mean(dim=0)
        assert logged[step] != pytest.approx((with_own[0] / with_own.sum()).item(), rel=1e-6)


# --- end to end through align.train ----------------------------------------------------------------------------------

def tiny_recipe(tmp_path: Path, *overrides: str) -> list[str]:
    return ["recipe=multiref-dpo-prefs-tiny", f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=3",
            "trainer.logging_steps=1", "algorithm.data.synthetic.num_train=300",
            "algorithm.data.synthetic.num_eval=64", "algorithm.validation_size=100",
            f"algorithm.cache_dir={tmp_path / 'cache'}", *overrides]


def test_tiny_recipe_trains_with_vaw_weights_ordered_by_reference_quality(tmp_path, capsys):
    from align.train import run
    from tests.conftest import compose

    summary = run(compose(tiny_recipe(tmp_path)))
    out = capsys.readouterr().out
    assert "held-out preference accuracy" in out and out.count(": computed (") == 6  # 3 references x 2 splits
    assert 0 <= summary["eval_after"]["eval_preference_accuracy"] <= 1
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    logged = [e for e in history if "loss" in e]
    weights = [logged[0][f"weights/tiny-pref:{tilt}"] for tilt in ("2", "0.5", "-1")]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0)
    assert all(e["perf/tokens_per_s"] > 0 and e["timing/update_s"] > 0 for e in logged)
    assert all(e["timing/validation_s"] == 0 for e in logged)  # vaw scores no validation pairs while training
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()

    run(compose(tiny_recipe(tmp_path / "again", f"algorithm.cache_dir={tmp_path / 'cache'}",
                            "algorithm.loss=mrpo")))
    assert capsys.readouterr().out.count(": cache hit") == 6  # another run, same references and data


def test_a_bad_reference_fails_before_any_reference_is_scored(tmp_path):
    from align.config import ConfigError
    from align.train import run
    from tests.conftest import compose

    overrides = tiny_recipe(tmp_path, "algorithm.references=[embedded:tiny-pref:2,/no/such/model]")
    with pytest.raises(ConfigError, match=r"algorithm.references\[1\]: Model path '/no/such/model' does not exist"):
        run(compose(overrides))
    assert not list(tmp_path.glob("cache/*.safetensors"))


def test_resume_refuses_a_checkpoint_without_strategy_state(tmp_path):
    trainer = small_run(tmp_path, "tsw", max_steps=2, save_strategy="steps", save_steps=1)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    (checkpoint / "multiref_state.json").unlink()
    resumed = small_run(tmp_path, "tsw", max_steps=2)
    with pytest.raises(CheckpointStateError, match="no multiref_state.json"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def one_reference_pairs(tmp_path: Path, n: int):
    """(policy tokenizer, a training dataset of n pairs scored by the tiny model as the one reference)."""
    tokenizer = load_tokenizer(TINY)
    rows, ids, _ = tokenize_pairs_dropping_long(tokenizer, preference_rows(n), 512)
    return tokenizer, pairs_dataset(ids, [score(ReferenceModelConfig(path=TINY), rows, normalize=True,
                                                batch_size=8, cache_dir=tmp_path / "cache")])


def test_tsw_needs_validation_pairs(tmp_path):
    tokenizer, train = one_reference_pairs(tmp_path, 8)
    algo = MultiRefDPOAlgorithmConfig(references=["a"], weighting="tsw", validation_size=4)
    with pytest.raises(ValueError, match="validation"):
        build_multiref_dpo_trainer(load_causal_lm(TINY, dtype="float32"), tokenizer, train, algo, ["a"],
                                   common_args(tmp_path))


def test_lora_policy_trains_an_adapter(tmp_path):
    from peft import LoraConfig

    tokenizer, train = one_reference_pairs(tmp_path, 16)
    algo = MultiRefDPOAlgorithmConfig(references=["a"], weighting="uniform", validation_size=0, beta=BETA)
    model = load_causal_lm(TINY, dtype="float32")
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = build_multiref_dpo_trainer(model, tokenizer, train, algo, ["a"],
                                         {**common_args(tmp_path), "max_steps": 2, "learning_rate": 1e-2},
                                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                task_type="CAUSAL_LM"))
    trainer.train()
    trained = dict(trainer.model.named_parameters())
    lora = [p for name, p in trained.items() if "lora_B" in name]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # lora_B starts at zero: it moved
    base = {name.replace("base_model.model.", "").replace(".base_layer", ""): p for name, p in trained.items()
            if "lora_" not in name}
    assert base.keys() == frozen.keys()
    assert all(torch.equal(base[name], value) for name, value in frozen.items())  # the base weights stay frozen
