"""Bad input fails before training starts, with a message that names the problem and the fix.

The first test drives the real command line (exit code 2, one readable line); the rest call `align.train.run` on the
composed config, which is what the command line does after composition, and assert on the error type and text.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from align.config import ConfigError
from align.data import DataError
from align.models import ModelLoadError, ensure_tiny
from align.rewards import RewardError
from align.train import run
from tests.conftest import REPO, compose


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "align.train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_unknown_recipe_exits_2_with_choices():
    result = cli("recipe=no-such-recipe")
    assert result.returncode == 2
    assert "Unknown recipe 'no-such-recipe'" in result.stderr and "grpo-arithmetic-tiny" in result.stderr


def test_cli_bad_batch_arithmetic_exits_2_before_loading(tmp_path):
    result = cli(f"trainer.output_dir={tmp_path}", "trainer.per_device_train_batch_size=6",
                 "algorithm.num_generations=4")
    assert result.returncode == 2
    assert "generation batch 6 is not divisible by num_generations 4" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before validation passes"


def test_cli_missing_model_path_exits_2(tmp_path):
    result = cli(f"trainer.output_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'missing-model'}")
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_missing_dataset_column_exits_2(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 1+1.", "final": "2"}) + "\n")
    result = cli(f"trainer.output_dir={tmp_path / 'run'}", f"data.source={data}", "eval.enabled=false")
    assert result.returncode == 2
    assert "column 'answer' is missing" in result.stderr and "data.columns.answer" in result.stderr


def test_cli_unknown_config_key_fails():
    result = cli("trainer.max_stepz=3")
    assert result.returncode != 0
    assert "max_stepz" in result.stderr


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# (id, arguments given the test's tmp_path, what the one error line must say). Every case is refused with exit code
# 2 before the run directory exists, i.e. before any model weights are loaded.
BAD_INPUT = [
    ("plus-typo", lambda tmp: ["+trainer.max_step=3"], "Did you mean 'trainer.max_steps'?"),
    ("typo", lambda tmp: ["trainer.max_stepz=3"], "trainer.max_stepz is not a setting of align"),
    ("top-level-plus", lambda tmp: ["+seeed=1"], "seeed is not a setting of align"),
    ("max-samples-0", lambda tmp: ["eval.max_samples=0"], "eval.max_samples must be >= 1"),
    ("save-steps", lambda tmp: ["trainer.save_steps=-1"], "trainer.save_steps must be >= 0"),
    ("top-p", lambda tmp: ["algorithm.top_p=2"], "algorithm.top_p must be in (0, 1], got 2.0"),
    ("temperature", lambda tmp: ["algorithm.temperature=-1"], "algorithm.temperature must be > 0"),
    ("scheduler", lambda tmp: ["trainer.lr_scheduler_type=foo"],
     "trainer.lr_scheduler_type is 'foo'; choose one of: linear, cosine"),
    ("steps-per-generation", lambda tmp: ["algorithm.steps_per_generation=-8"],
     "algorithm.steps_per_generation must be >= 1"),
    ("nan", lambda tmp: ["algorithm.beta=nan"], "algorithm.beta must be >= 0"),
    ("wrong-type", lambda tmp: ["algorithm.beta=high"], "algorithm.beta: Value 'high'"),
    ("resume-mode", lambda tmp: ["resume=always"], "resume is 'always'; choose one of: never, auto"),
    ("logger-mode", lambda tmp: ["logger.mode=loud"], "logger.mode is 'loud'"),
    ("answer-regex", lambda tmp: ["data.answer_regex='(['"], "data.answer_regex '([' is not a valid regular"),
    ("sweep", lambda tmp: ["-m", "trainer.max_steps=2,-1"],
     "sweep point 1 (trainer.max_steps=-1): trainer.max_steps must be >= 1"),
    ("lora-targets", lambda tmp: ["model.lora.r=4", "model.lora.target_modules=[q_proj,qkv]"],
     "model.lora.target_modules: ['qkv'] name no module"),
    ("recipe-yaml", lambda tmp: ["recipe=" + _write(tmp / "broken.yaml", b"trainer: {max_steps: 3")],
     "is not valid YAML at line 1"),
    ("recipe-header", lambda tmp: ["recipe=" + _write(tmp / "mine.yaml", b"trainer:\n  max_steps: 3\n")],
     "lacks the header line '# @package _global_'"),
    ("not-utf8", lambda tmp: ["data.source=" + _write(tmp / "latin1.jsonl", b'{"prompt": "caf\xe9"}\n')],
     "is not UTF-8 text: line 1, byte 16 (b'\\xe9')"),
    ("model-is-data", lambda tmp: ["model.path=" + str(Path(_write(tmp / "train.jsonl", b"{}")).parent)],
     "is a directory without config.json, so not a model checkpoint"),
    ("sft-column", lambda tmp: ["recipe=sft-arithmetic-tiny", "algorithm.completion_column=nope"],
     # not data.columns.nope, which does not exist:
     "'hints', 'carries']. Set algorithm.completion_column to one of them."),
    # Checked before Hydra starts, without importing torch, TRL or datasets (test_cheap_checks_import_nothing_heavy):
    ("reward-name", lambda tmp: ["reward.sources=[{name: boxd_match}]"],
     "reward.sources[0].name: Unknown reward source 'boxd_match'. Did you mean 'boxed_match'?"),
    ("reward-path", lambda tmp: ["reward.sources=[{name: 'my rewards:score'}]"],
     "reward.sources[0].name: Reward source 'my rewards:score' is not an import path"),
    ("eval-metric", lambda tmp: ["eval.metric=boxd"], "eval.metric: Unknown reward source 'boxd'"),
    ("synthetic-task", lambda tmp: ["data.synthetic.task=algebra"],
     "data.synthetic.task is 'algebra'; choose one of: arithmetic, arithmetic_chat"),
    ("trl-field", lambda tmp: ["+trainer.trl.hub_tokn=1"],
     "trainer.trl.hub_tokn is not a field of TRL's GRPOConfig. Did you mean 'hub_token'?"),
    ("missing-model", lambda tmp: [f"model.path={tmp / 'no-model'}"], "model.path: Model path '"),
    ("attention", lambda tmp: ["model.attn_implementation=flashy"],
     "model.attn_implementation is 'flashy'; choose one of: eager,"),
    # Hydra's own errors, made one line with the fix:
    ("recipe-key-typo", lambda tmp: ["recipe=" + _write(tmp / "mine.yaml", b"# @package _global_\ntrainer:\n"
                                                                          b"  max_stepz: 3\n")],
     "recipe/mine: trainer.max_stepz is not a setting of align (only open dicts such as trainer.trl take new keys). "
     "Did you mean 'trainer.max_steps'?"),
    ("group-typo", lambda tmp: ["algorithm=grpoo"],
     "algorithm=grpoo: no such option; did you mean grpo? Options: fgrpo, fhal, grpo, gspo,"),  # no *_schema
    ("space-after-equals", lambda tmp: ["trainer.max_steps=", "3"],  # what the shell makes of trainer.max_steps= 3
     "override 'trainer.max_steps= 3' is not setting=value (a space after '='?); write trainer.max_steps=3."),
    ("space-before-equals", lambda tmp: ["trainer.max_steps =3"],
     "override 'trainer.max_steps =3' is not setting=value (a space before '='?); write trainer.max_steps=3."),
    ("open-dict-without-plus", lambda tmp: ["trainer.trl.hub_token=X"],
     "trainer.trl.hub_token is a new key of an open dict: add it with a leading '+'"),
    ("output-dir-is-a-file", lambda tmp: ["trainer.output_dir=" + _write(tmp / "notes.txt", b"notes")],
     "notes.txt is a file, not a directory"),
]


@pytest.mark.parametrize("arguments, message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_before_any_load(arguments, message, tmp_path, monkeypatch, capsys):
    """Through the real entry point (`align.train.main`, in this process to stay fast)."""
    from align.train import main

    run_dir, root = tmp_path / "run", tmp_path / "root"
    monkeypatch.setattr(sys, "argv", ["align-train", f"trainer.output_dir={run_dir}", f"trainer.output_root={root}",
                                      *arguments(tmp_path)])  # last: a case's own output_dir overrides the default
    with pytest.raises(SystemExit) as exit_:
        main()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("align: error: ")]
    assert exit_.value.code == 2 and len(errors) == 1, errors
    assert message in errors[0]
    assert not run_dir.exists() and not root.exists(), "refused before the run directory: no weights were loaded"


CHEAP = ("reward-name", "eval-metric", "synthetic-task", "trl-field", "missing-model", "attention", "recipe-key-typo")


@pytest.mark.parametrize("arguments", [case[1] for case in BAD_INPUT if case[0] in CHEAP],
                         ids=[case[0] for case in BAD_INPUT if case[0] in CHEAP])
def test_cheap_checks_import_nothing_heavy(arguments, tmp_path):
    """These values are refused before anything heavy is imported (a config error prints within ~2 s): reward names,
    synthetic tasks, TRL field names, attention names and user recipes are read without importing torch, TRL,
    datasets or math_verify (measured by what is imported, not by a clock)."""
    from tests.test_console import HEAVY, _imported

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "align.train", *arguments(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1 and errors[0].startswith("align: error: "), errors
    assert not (HEAVY | {"math_verify"}) & _imported(result.stderr)


def test_valid_names_pass_validation_without_importing_them():
    """A user's reward function (its module is imported only when the run builds its rewards), a TRL field and an
    attention implementation pass the pre-Hydra check without importing the user's module, TRL or transformers."""
    code = ("import sys; from align.compose import check_config; "
            "check_config(['reward.sources=[{name: \"tests.bad_rewards:nan_reward\"}]', '+trainer.trl.hub_token=x', "
            "'model.attn_implementation=kernels-community/flash-attn2']); "
            "print(sorted(m for m in ('tests.bad_rewards', 'torch', 'trl', 'transformers', 'datasets') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_missing_dataset_column(tmp_path, tiny_run):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"Compute {i}+1.", "final": str(i + 1)}) for i in range(8)))
    cfg = compose(tiny_run + [f"data.source={data}", "data.eval_size=2", "data.columns.prompt=question"])
    with pytest.raises(DataError, match="'answer'.*data.columns.answer"):
        run(cfg)


def test_model_path_that_does_not_exist(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="model.path: Model path .* does not exist"):
        run(compose(tiny_run + [f"model.path={tmp_path / 'no-model'}"]))


def test_tokenizer_without_chat_template(tiny_run, tmp_path):
    model_dir = tmp_path / "no-template"
    shutil.copytree(ensure_tiny(), model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no chat template.*model.chat_template"):
        run(compose(tiny_run + [f"model.path={model_dir}"]))


def test_num_generations_not_dividing_generation_batch(tiny_run):
    with pytest.raises(ConfigError, match="generation batch 8 is not divisible by num_generations 3"):
        run(compose(tiny_run + ["algorithm.num_generations=3"]))


def test_reward_function_that_raises_names_function_and_sample(tiny_run, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": "Compute 1+1.", "answer": "2", "solution": "\\boxed{2}"},
            {"prompt": "Compute 2+2.", "answer": "boom", "solution": "\\boxed{4}"},
            {"prompt": "Compute 3+3.", "answer": "6", "solution": "\\boxed{6}"}] * 4
    data.write_text("\n".join(json.dumps(r) for r in rows))
    overrides = tiny_run + [f"data.source={data}", "data.eval_size=4",
                            "reward.sources=[{name: 'tests.bad_rewards:raises_on_boom'}]"]
    with pytest.raises(RewardError) as err:
        run(compose(overrides))
    assert "raises_on_boom" in str(err.value) and "sample 1" in str(err.value)
    assert "Compute 2+2." in str(err.value)


def test_nan_reward_is_rejected(tiny_run):
    overrides = tiny_run + ["reward.sources=[{name: 'tests.bad_rewards:nan_reward'}]"]
    with pytest.raises(RewardError, match="(?i)nan"):
        run(compose(overrides))


def test_an_existing_run_directory_is_never_overwritten(tiny_run, tmp_path):
    from align.run_dir import claim_run_dir, mark_started

    run_dir = tmp_path / "run"
    claim_run_dir(run_dir)
    mark_started(run_dir)
    (run_dir / "config.yaml").write_text("finished: true\n")
    with pytest.raises(ConfigError, match="already holds a run"):
        run(compose(tiny_run))
    assert (run_dir / "config.yaml").read_text() == "finished: true\n"


def test_unknown_hub_name_offline_is_a_clear_model_error(tiny_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Cannot load the tokenizer of 'no-such-org/no-such-model'"):
        run(compose(tiny_run + ["model.path=no-such-org/no-such-model"]))


def test_sage_without_reference_solutions(tiny_run, tmp_path):
    rows = [{"prompt": f"Compute {i}+1.", "answer": str(i + 1)} for i in range(8)]
    data = tmp_path / "no_solutions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="no 'solution' column .* data.columns.solution=<column>"):
        run(compose([*tiny_run, "algorithm=sage", f"data.source={data}", "eval.enabled=false"]))
    for row in rows:
        row["solution"] = ""
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="Every row's 'solution' is empty"):
        run(compose([*tiny_run, "algorithm=sage", f"data.source={data}", "eval.enabled=false"]))
    assert not (tmp_path / "run").exists(), "refused before the run directory is created"
