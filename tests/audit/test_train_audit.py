"""`eval.audit`: an audit of the final model against the starting one at the end of a training run."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from align.audit.prompts import check_eval_prompt_sets
from align.config import ConfigError
from tests.conftest import compose


def test_a_missing_audit_prompt_file_is_refused_before_loading(tiny_run, tmp_path):
    cfg = compose(tiny_run + ["eval.audit=true", f"eval.audit_control={tmp_path / 'none.jsonl'}"])
    with pytest.raises(ConfigError, match=r"eval.audit_control: prompt file .*none.jsonl does not exist"):
        check_eval_prompt_sets(OmegaConf.to_object(cfg).eval)
    check_eval_prompt_sets(OmegaConf.to_object(compose(tiny_run + ["eval.audit=true"])).eval)  # the shipped sets


@pytest.mark.slow
def test_a_run_with_eval_audit_writes_the_audit_next_to_the_gate(tiny_run):
    from align.train import run

    summary = run(compose(tiny_run + ["eval.audit=true", "eval.enabled=false", "trainer.max_steps=1"]))
    report = json.loads((Path(summary["run_dir"]) / "audit" / "audit.json").read_text())
    assert summary["audit"]["report"].endswith("audit/audit.md")
    assert report["config"]["aligned"].endswith("final") and report["config"]["n_target"] == 64
    assert len(report["layers"]) == 4
