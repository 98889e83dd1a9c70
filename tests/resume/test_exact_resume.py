"""Preemption-safe exact resume: train N steps straight vs train with checkpoints, SIGKILL the process right after
checkpoint k is complete, resume with resume=auto to N. Weights and the logged losses of steps k+1..N must match.

Tolerance: the CPU runs are deterministic (same seeds, restored RNG states and data order), so the match is exact
up to float32 rounding: weights to 1e-6 absolute, losses to 1e-6 relative or absolute (GRPO-family losses
are sums of zero-mean advantages, ~1e-8 apart from 0).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.checkpoints import COMPLETE_MARKER, newest_complete_checkpoint
from align.preemption import Preemption, Stopped, StopRequest
from align.train import run
from tests.conftest import SAGE_TEMPLATES, compose

REPO = Path(__file__).resolve().parents[2]
TOTAL, KILL_AFTER = 5, 2

DENSE_REWARD = "reward.sources=[{name: 'tests.resume.rewards:digit_share'}]"
GRPO = ["trainer.per_device_train_batch_size=8", "algorithm.num_generations=4", "algorithm.max_completion_length=16",
        "data.synthetic.num_train=64", "eval.enabled=false", DENSE_REWARD]


def train_straight(overrides: list[str], out: Path) -> dict:
    return run(compose(overrides + [f"trainer.output_dir={out}", f"trainer.max_steps={TOTAL}",
                                    f"trainer.save_steps={KILL_AFTER}"]))


def train_killed_then_resumed(overrides: list[str], out: Path) -> dict:
    """A process trains with a checkpoint every KILL_AFTER steps and is SIGKILLed as soon as the first one is
    complete; then `resume=auto` finishes the run in the same directory."""
    args = overrides + [f"trainer.output_dir={out}", f"trainer.max_steps={TOTAL}", f"trainer.save_steps={KILL_AFTER}",
                        "resume=auto"]
    log_path = out.with_name(f"{out.name}-killed.log")  # a file, not a pipe: a full pipe would stall the trainer
    with open(log_path, "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "align.train", *args], cwd=REPO, stdout=log_file,
                                   stderr=subprocess.STDOUT)
        marker = out / f"checkpoint-{KILL_AFTER}" / COMPLETE_MARKER
        deadline = time.monotonic() + 600
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert marker.exists(), f"no checkpoint before the kill:\n{log_path.read_text()[-3000:]}"
    assert not (out / "final").exists(), "the process finished before it was killed: the test proves nothing"
    return run(compose(args))


def losses(run_dir: Path) -> dict[int, float]:
    history = json.loads((Path(run_dir) / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: e["loss"] for e in history if "loss" in e}


def assert_same_training(straight: dict, resumed: dict) -> None:
    a, b = losses(straight["run_dir"]), losses(resumed["run_dir"])
    assert sorted(a) == sorted(b) == list(range(1, TOTAL + 1))
    for step in range(KILL_AFTER + 1, TOTAL + 1):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), f"loss of step {step}"
    assert any(b[step] != 0 for step in b), "a run whose loss is 0 throughout proves nothing"
    weights_a = load_file(Path(straight["final_model"]) / "model.safetensors")
    weights_b = load_file(Path(resumed["final_model"]) / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("name, overrides", [
    ("grpo", GRPO),
    ("fgrpo", ["algorithm=fgrpo", *GRPO, "algorithm.divergence=hellinger"]),
])
def test_grpo_family_resumes_exactly_after_sigkill(tmp_path, name, overrides):
    assert_same_training(train_straight(overrides, tmp_path / "straight"),
                         train_killed_then_resumed(overrides, tmp_path / "resumed"))


def test_sage_light_resumes_its_hint_levels_exactly(tmp_path, hint_writer):
    rows = tmp_path / "train.jsonl"
    from tests.conftest import sage_rows

    rows.write_text("".join(json.dumps(r) + "\n" for r in sage_rows(4, seed=2)))
    overrides = ["algorithm=sage_light", f"model.path={hint_writer}", f"data.source={rows}",
                 DENSE_REWARD, "trainer=cpu", "trainer.per_device_train_batch_size=8",
                 "algorithm.num_generations=4", "algorithm.max_completion_length=16", "eval.enabled=false",
                 *SAGE_TEMPLATES]
    straight = train_straight(overrides, tmp_path / "straight")
    resumed = train_killed_then_resumed(overrides, tmp_path / "resumed")
    assert_same_training(straight, resumed)
    state = json.loads((tmp_path / "resumed" / f"checkpoint-{2 * KILL_AFTER}" / "sage_state.json").read_text())
    assert state == json.loads((tmp_path / "straight" / f"checkpoint-{2 * KILL_AFTER}" / "sage_state.json").read_text())


def test_reward_model_resumes_exactly(tmp_path):
    overrides = ["recipe=reward-gaussian-prefs-tiny", "trainer.per_device_train_batch_size=16",
                 "trainer.logging_steps=1", "algorithm.data.synthetic.num_train=160",
                 "algorithm.data.synthetic.num_eval=32"]
    assert_same_training(train_straight(overrides, tmp_path / "straight"),
                         train_killed_then_resumed(overrides, tmp_path / "resumed"))


def test_multiref_dpo_with_thompson_sampling_resumes_exactly(tmp_path):
    overrides = ["recipe=multiref-dpo-prefs-tiny", "algorithm.weighting=tsw", "algorithm.loss=mrpo",
                 "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
                 "algorithm.data.synthetic.num_train=96", "algorithm.data.synthetic.num_eval=16",
                 "algorithm.validation_size=16", "algorithm.bandit_pairs=8"]
    straight = train_straight(overrides, tmp_path / "straight")
    resumed = train_killed_then_resumed(overrides, tmp_path / "resumed")
    assert_same_training(straight, resumed)
    final_state = [json.loads((tmp_path / d / f"checkpoint-{2 * KILL_AFTER}" / "multiref_state.json").read_text())
                   for d in ("straight", "resumed")]
    assert final_state[0] == final_state[1], "posteriors, arm history and RNGs continue exactly"


# --- complete / incomplete checkpoints --------------------------------------------------------------------------------

def test_a_checkpoint_truncated_mid_write_is_set_aside_with_a_warning(tmp_path, caplog):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        if complete:
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    with caplog.at_level(logging.WARNING, logger="align"):
        assert newest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert "checkpoint-6 was not completely written" in caplog.text
    assert not (tmp_path / "checkpoint-6").exists() and list(tmp_path.glob("incomplete-checkpoint-6-*"))
    assert newest_complete_checkpoint(tmp_path / "missing") is None


def test_resume_auto_continues_past_a_truncated_checkpoint(tmp_path):
    out = tmp_path / "run"
    first = run(compose(GRPO + [f"trainer.output_dir={out}", "trainer.max_steps=2", "trainer.save_steps=1",
                                "trainer.save_total_limit=5", "resume=auto"]))
    assert first["final_model"]
    # A save of step 2 cut short: the marker never written, a half file left behind.
    os.remove(out / "checkpoint-2" / COMPLETE_MARKER)
    (out / "checkpoint-2" / "model.safetensors").write_bytes(b"truncated")
    summary = run(compose(GRPO + [f"trainer.output_dir={out}", "trainer.max_steps=3", "trainer.save_steps=1",
                                  "trainer.save_total_limit=5", "resume=auto"]))
    assert [e for e in losses(summary["run_dir"])] == [1, 2, 3], "steps 2 and 3 trained again from checkpoint-1"
    assert all((out / f"checkpoint-{s}" / COMPLETE_MARKER).exists() for s in (1, 2, 3))


def test_resume_auto_needs_a_named_run_and_the_same_experiment(tmp_path):
    from align.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.run_name=NAME"):
        run(compose(GRPO + ["resume=auto"]))
    out = tmp_path / "run"
    run(compose(GRPO + [f"trainer.output_dir={out}", "trainer.max_steps=1", "resume=auto"]))
    with pytest.raises(ConfigError, match="different algorithm settings"):
        run(compose(GRPO + [f"trainer.output_dir={out}", "trainer.max_steps=2", "resume=auto",
                            "algorithm.epsilon=0.3"]))


def test_prompt_order_of_a_later_epoch_does_not_depend_on_the_epochs_before():
    """A resumed run builds a fresh sampler: epoch e's order must come from (seed, e) alone, and epoch 0 keeps TRL's."""
    from trl.trainer.utils import RepeatSampler

    from align.methods.grpo.trainer import EpochSeededRepeatSampler

    def order(sampler, epoch):
        sampler.set_epoch(epoch)
        return list(sampler)

    kwargs = dict(data_source=list(range(12)), mini_repeat_count=2, batch_size=3, seed=7)
    running = EpochSeededRepeatSampler(**kwargs)
    epochs = [order(running, e) for e in range(3)]
    assert epochs[0] == list(RepeatSampler(**kwargs)), "first epoch as TRL orders it"
    assert epochs[1] != epochs[0] and epochs[2] != epochs[1], "a new shuffle every epoch"
    assert order(EpochSeededRepeatSampler(**kwargs), 2) == epochs[2], "a fresh sampler (a resume) agrees"


def _step_end(callback, step: int, max_steps: int = 10):
    from types import SimpleNamespace

    from transformers import TrainerControl

    control = TrainerControl()
    callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=max_steps), control)
    return control


def test_a_signal_stops_training_at_the_next_consistent_step_and_only_usr1_asks_for_a_requeue():
    request = StopRequest()
    previous = signal.getsignal(signal.SIGUSR1)
    with request.installed():
        preemption = Preemption(step_multiple=2, request=request)
        assert not _step_end(preemption, 1).should_save, "no signal, nothing to do"
        os.kill(os.getpid(), signal.SIGUSR1)  # the real handler, installed by the context
        control = _step_end(preemption, 3)
        assert not control.should_save and not control.should_training_stop, "inside a generation cycle: wait"
        control = _step_end(preemption, 4)
        assert control.should_save and control.should_training_stop
        assert request.agreed() == (True, True, False), "(requested, requeue, interrupted)"
    assert signal.getsignal(signal.SIGUSR1) == previous, "handlers restored"
    with request.installed():
        request._handle(signal.SIGTERM, None)
        request._handle(signal.SIGUSR1, None)
        assert request.agreed() == (True, False, False), "SIGTERM saves but does not requeue; the first signal counts"
    with request.installed():
        request._handle(signal.SIGUSR1, None)
        control = _step_end(Preemption(step_multiple=4, request=request), 9, max_steps=9)
        assert control.should_save, "the last step still saves"


def test_a_stop_request_records_the_phase_and_a_second_ctrl_c_stops_at_once(capfd):
    request = StopRequest()
    previous = signal.getsignal(signal.SIGINT)
    with request.installed():
        request.phase = "model loading"
        os.kill(os.getpid(), signal.SIGINT)
        request.phase = "training"
        assert request.agreed() == (True, False, True) and request.during == "model loading"
        assert "Ctrl-C again to stop at once" in capfd.readouterr().err
        with pytest.raises(Stopped, match="stopped by SIGINT during model loading; kept: checkpoint-3"):
            request.check(lambda: "checkpoint-3")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == previous, "handlers restored"
    with request.installed():
        assert request.agreed() == (False, False, False), "each run starts with a fresh record"
        request.check(lambda: pytest.fail("nothing to keep without a signal"))


def test_an_ignored_sigint_stays_ignored():
    """A shell's background job starts with SIGINT ignored; the run must not start stopping on the terminal's Ctrl-C."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        request = StopRequest()
        with request.installed():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == request._handle
            os.kill(os.getpid(), signal.SIGINT)
            assert request.agreed() == (False, False, False)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoints_inside_a_generation_cycle_are_refused():
    from align.config import ConfigError, validate

    cfg = compose(GRPO + ["trainer.gradient_accumulation_steps=1", "algorithm.num_iterations=2",
                          "trainer.save_steps=3"])
    with pytest.raises(ConfigError, match="trainer.save_steps 3 must be a multiple of 2"):
        from omegaconf import OmegaConf

        validate(OmegaConf.to_object(cfg))


def test_a_tied_output_embedding_missing_from_a_checkpoint_is_no_warning(tmp_path, monkeypatch):
    """Checkpoints store a tied lm_head once, under the input embedding's name; resuming must not warn about it, while
    a key that is really missing still does."""
    import transformers.trainer
    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import Trainer, TrainingArguments

    from align.checkpoints import CompleteCheckpoints
    from align.models import ensure_tiny, load_causal_lm

    class Checkpointed(CompleteCheckpoints, Trainer):
        pass

    warned = []
    monkeypatch.setattr(transformers.trainer.logger, "warning", lambda message, *args: warned.append(message))
    trainer = Checkpointed(model=load_causal_lm(str(ensure_tiny())),
                           args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    assert "lm_head.weight" in trainer.model.all_tied_weights_keys
    trainer._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight"], []))
    assert warned == []
    trainer._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight", "model.norm.weight"], []))
    assert len(warned) == 1 and "['model.norm.weight']" in warned[0]
