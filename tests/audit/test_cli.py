"""`python -m align.audit`: one-line errors before any weights load, and a full run's outputs."""

import json
import subprocess
import sys

import pytest
import torch

from align.audit.activations import decoder_blocks
from align.audit.cli import main as audit_main
from align.gate.cli import main as gate_main
from align.models import ensure_tiny, load_causal_lm, load_tokenizer

PLANTED, RANK = 2, 2


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny model, a copy with a rank-2 update planted in block 2's W_down, one with another depth, and one with
    another tokenizer."""
    root = tmp_path_factory.mktemp("audit-models")
    tiny = ensure_tiny()
    tokenizer = load_tokenizer(str(tiny))
    model = load_causal_lm(str(tiny), dtype="float32")
    g = torch.Generator().manual_seed(7)
    weight = decoder_blocks(model)[PLANTED].mlp.down_proj.weight
    with torch.no_grad():
        weight += torch.randn(weight.shape[0], RANK, generator=g) @ torch.randn(RANK, weight.shape[1], generator=g)
    model.save_pretrained(root / "planted")
    tokenizer.save_pretrained(root / "planted")
    from transformers import Qwen2ForCausalLM

    config = model.config.to_dict() | {"num_hidden_layers": 2}
    config.pop("layer_types", None)
    shallow = Qwen2ForCausalLM(type(model.config)(**config))
    shallow.save_pretrained(root / "shallow")
    tokenizer.save_pretrained(root / "shallow")
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(load_causal_lm(str(tiny), dtype="float32"),
                          LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False))
    lora.save_pretrained(root / "lora")  # what a LoRA run's final/ holds: the adapter and the tokenizer
    tokenizer.save_pretrained(root / "lora")
    model.save_pretrained(root / "other-tokenizer")
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(root / "other-tokenizer")
    return {"tiny": str(tiny), **{name: str(root / name) for name in ("planted", "shallow", "other-tokenizer", "lora")}}


def _error(capsys, argv) -> str:
    assert audit_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align.audit: error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(checkpoints, tmp_path, capsys):
    pair = ["--base", checkpoints["tiny"], "--aligned", checkpoints["planted"], "--out", str(tmp_path / "out")]
    assert "outside (0, 1)" in _error(capsys, [*pair, "--eps", "1.5"])
    assert "outside (0, 1)" in _error(capsys, [*pair, "--eps", "0"])
    assert "missing.jsonl does not exist" in _error(capsys, [*pair, "--target", str(tmp_path / "missing.jsonl")])
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "holds no prompts" in _error(capsys, [*pair, "--control", str(tmp_path / "empty.txt")])
    (tmp_path / "bad.jsonl").write_text('{"prompt": [{"role": "user"}]}\n')
    assert "bad.jsonl:1: not a prompt" in _error(capsys, [*pair, "--target", str(tmp_path / "bad.jsonl")])
    assert "--dtype 'float8'" in _error(capsys, [*pair, "--dtype", "float8"])
    assert "unknown prompt set" in _error(capsys, [*pair, "--target", "embedded:nope"])
    assert "--direction" in _error(capsys, [*pair, "--direction", str(tmp_path / "none.npy")])
    assert "differ in architecture" in _error(capsys, ["--base", checkpoints["tiny"], "--aligned",
                                                       checkpoints["shallow"], "--out", str(tmp_path / "out")])
    assert "different tokenizers" in _error(capsys, ["--base", checkpoints["tiny"], "--aligned",
                                                     checkpoints["other-tokenizer"], "--out", str(tmp_path / "out")])
    assert "does not exist" in _error(capsys, ["--base", str(tmp_path / "nowhere"), "--aligned",
                                               checkpoints["tiny"], "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_run_writes_report_plots_and_gate_readable_ablation_records(checkpoints, tmp_path, capsys):
    out = tmp_path / "audit"
    (tmp_path / "target.txt").write_text("What is 12 plus 30?\nAdd 7 and 8.\nCompute 100+1.\nSum 5 and 6.\n")
    assert audit_main(["--base", checkpoints["tiny"], "--aligned", checkpoints["planted"], "--n", "4",
                       "--target", str(tmp_path / "target.txt"), "--ablate-k", "1,3", "--ablate-n", "3",
                       "--ablate-seeds", "1", "--ablate-singles", "2", "--max-new-tokens", "4",
                       "--out", str(out)]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["config"]["n_target"] == 4 and report["config"]["width"] == 128
    assert len(report["config"]["target_sha256"]) == 64 and len(report["config"]["chat_template_sha256"]) == 64
    layers = report["layers"]
    assert [row["layer"] for row in layers] == [0, 1, 2, 3]
    for row in layers[:PLANTED]:
        assert row["variants"]["template"]["rank_eps"] == 0 and row["variants"]["did"]["rank_eps"] == 0
    planted = layers[PLANTED]["variants"]["template"]
    assert planted["numerical_rank"] == RANK and 1 <= planted["rank_eps"] <= RANK
    assert len(planted["spectrum"]) == 4 and set(planted["rank_at_eps"]) == {"0.01", "0.05", "0.1", "0.2"}
    assert set(layers[0]["variants"]) == {"naive", "template", "aligned", "did", "template_control"}
    markdown = (out / "audit.md").read_text()
    assert markdown.splitlines()[2].startswith("> rho_eps is a fragility diagnostic")
    assert "| 2 | template | " in markdown and "## Ablation" in markdown
    for png in ("cumulative_energy.png", "spectra.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    ablation = report["ablation"]
    assert ablation["layers"] == [2, 3] and ablation["k"] == [1, 3]  # narrow band of 4 blocks: 1.8..2.8 rounded
    assert {"baseline", "template-k1", "template-k3", "template-u2", "did-k3", "random-k3-seed0",
            "random-k3"} <= set(ablation["runs"])
    assert ablation["runs"]["baseline"]["metric"] == "refusal"  # plain text prompts carry no answers
    assert ablation["held_out"] is False and "**Not held out:**" in markdown  # 4 target prompts, --n 4
    capsys.readouterr()
    assert gate_main(["--baseline", str(out / "ablation" / "baseline.jsonl"),
                      "--candidate", str(out / "ablation" / "template-k3.jsonl")]) in (0, 1)
    assert "| audit-ablation | refusal | 3 |" in capsys.readouterr().out  # paired item by item


def test_a_lora_adapter_is_audited_on_its_base(checkpoints, tmp_path):
    out = tmp_path / "audit"
    assert audit_main(["--base", checkpoints["tiny"], "--aligned", checkpoints["lora"], "--n", "4",
                       "--out", str(out)]) == 0
    layers = json.loads((out / "audit.json").read_text())["layers"]
    assert all(row["variants"]["template"]["rank_eps"] >= 1 for row in layers)  # every block's W_down has LoRA


@pytest.mark.slow
def test_module_entry_point_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "align.audit", "--base", "embedded:tiny", "--aligned",
                          "embedded:tiny", "--eps", "2"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["align.audit: error: --eps 2.0 is outside (0, 1): eps is the share "
                                               "of energy left out, e.g. 0.05"]


def test_the_contrast_baseline_is_the_base_models_raw_pair_difference(checkpoints, tmp_path):
    """--contrast adds a row per layer: the base model's raw H(first_i) - H(second_i); a set against itself is rank 0,
    and questions against statements match the difference computed by hand from the activations."""
    from align.audit.activations import RAW, last_token_activations, render
    from align.audit.prompts import load_prompts
    from align.audit.ranks import singular_values

    out, same = tmp_path / "audit", tmp_path / "same"
    pair = ["--base", checkpoints["tiny"], "--aligned", checkpoints["planted"], "--n", "6"]
    assert audit_main([*pair, "--contrast", "embedded:questions", "embedded:statements", "--out", str(out)]) == 0
    assert audit_main([*pair, "--contrast", "embedded:questions", "embedded:questions", "--out", str(same)]) == 0
    report = json.loads((out / "audit.json").read_text())
    assert report["config"]["contrast"] == ["embedded:questions", "embedded:statements"]
    assert report["config"]["n_contrast"] == 6
    assert all(row["variants"]["contrast"]["rank_eps"] == 0
               for row in json.loads((same / "audit.json").read_text())["layers"])
    tokenizer = load_tokenizer(checkpoints["tiny"])
    model = load_causal_lm(checkpoints["tiny"], dtype="float32").eval()
    first, second = (last_token_activations(model, tokenizer, render(tokenizer, load_prompts(name).head(6).prompts,
                                                                     RAW), add_special_tokens=True)
                     for name in ("embedded:questions", "embedded:statements"))
    for row in report["layers"]:  # the planted change in the aligned model does not enter the base-only baseline
        contrast = row["variants"]["contrast"]
        expected = singular_values((first[row["layer"]] - second[row["layer"]]).T.double())
        assert torch.allclose(torch.tensor(contrast["spectrum"], dtype=torch.float64), expected, rtol=1e-4, atol=1e-6)
        assert contrast["rank_eps"] >= 1 and contrast["rho_eps"] == contrast["rank_eps"] / 128  # rho over d, not n
        assert contrast["cos_u1_ref"] is not None
    markdown = (out / "audit.md").read_text()
    assert "| 3 | contrast | " in markdown and "the rank baseline" in markdown


def test_contrast_sets_of_unequal_length_are_refused_before_loading(checkpoints, tmp_path, capsys, monkeypatch):
    import align.audit.run

    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before the contrast sets were checked")

    monkeypatch.setattr(align.audit.run, "load_causal_lm", no_weights)
    (tmp_path / "three.txt").write_text("Is it red?\nIs it big?\nIs it old?\n")
    (tmp_path / "two.txt").write_text("It is red.\nIt is big.\n")
    # --n 2 would cut both files to two prompts: the lengths are compared before that cut
    err = _error(capsys, ["--base", checkpoints["tiny"], "--aligned", checkpoints["planted"], "--contrast",
                          str(tmp_path / "three.txt"), str(tmp_path / "two.txt"), "--n", "2",
                          "--out", str(tmp_path / "out")])
    assert "pairs its two sets prompt by prompt" in err and "3 prompts" in err and "equal length" in err
