"""Run directories align owns, verified checkpoints, and a full disk at save.

align writes only into a new or empty directory or one that holds an align run (`.align-run`); checkpoint rotation
and the setting aside of bad checkpoints touch only what align wrote; `resume=auto` verifies each checkpoint's files
against the sizes and SHA-256 its completion marker records and falls back to the newest one that verifies; a save
that runs out of disk space ends the run with one line naming the newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.checkpoints import (
    COMPLETE_MARKER,
    DiskFullError,
    checkpoint_problem,
    disk_full_reported,
    rotate_checkpoints,
)
from align.config import ConfigError
from align.models import ensure_tiny
from align.run_dir import RUN_MARKER, RunDir, claim_run_dir, mark_started, run_dir_kind
from align.train import run
from tests.conftest import REPO, compose
from tests.resume.test_exact_resume import GRPO, losses


def train(out: Path, *overrides: str) -> dict:
    return run(compose(GRPO + [f"trainer.output_dir={out}", "trainer.save_steps=1", "trainer.save_total_limit=5",
                               *overrides]))


# --- which directories a run may write into ---------------------------------------------------------------------------

def test_run_dir_kinds(tmp_path):
    assert run_dir_kind(tmp_path / "missing") is RunDir.NEW
    assert run_dir_kind(tmp_path) is RunDir.NEW, "empty"
    (tmp_path / "notes.txt").write_text("mine")
    assert run_dir_kind(tmp_path) is RunDir.FOREIGN
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir)
    assert run_dir_kind(run_dir) is RunDir.PREPARED
    mark_started(run_dir)
    assert run_dir_kind(run_dir) is RunDir.STARTED
    claim_run_dir(run_dir)
    assert run_dir_kind(run_dir) is RunDir.STARTED, "claiming again keeps the marker"
    (run_dir / RUN_MARKER).write_text("{not json")
    assert run_dir_kind(run_dir) is RunDir.FOREIGN, "an unreadable marker proves nothing"


def test_a_run_directory_from_before_the_marker_counts_as_a_started_run(tmp_path):
    saved_without_checkpoints = tmp_path / "final-only"
    (saved_without_checkpoints / "final").mkdir(parents=True)
    (saved_without_checkpoints / "config.yaml").write_text("trainer: {}\n")
    (saved_without_checkpoints / "final" / "config.json").write_text("{}")
    assert run_dir_kind(saved_without_checkpoints) is RunDir.STARTED, "trainer.save_steps=0: only final/"
    (tmp_path / "config.yaml").write_text("trainer: {}\n")
    _checkpoint(tmp_path, 2, complete=False)
    assert run_dir_kind(tmp_path) is RunDir.FOREIGN, "a config.yaml and a checkpoint-* folder prove nothing"
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text(json.dumps({"step": 2}))
    assert run_dir_kind(tmp_path) is RunDir.STARTED
    claim_run_dir(tmp_path)  # what resume=auto does next
    assert json.loads((tmp_path / RUN_MARKER).read_text())["started"]


@pytest.mark.slow
def test_a_foreign_directory_is_refused_before_loading_and_left_untouched(tmp_path):
    out = tmp_path / "o"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "important.txt").write_text("x\n")
    (out / "README.md").write_text("notes\n")
    # `python -m align.train ...`, reporting at exit which of align's loaders ran
    entry = ("import sys\nfrom align.train import main\ntry:\n    main()\nfinally:\n"
             "    print('loaders:', [m for m in ('align.data', 'align.models') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", entry, f"trainer.output_dir={out}", "trainer.max_steps=2",
                             "trainer.save_steps=1", "eval.enabled=false"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"align: error: trainer.output_dir {out} is not empty and holds no align run; choose an empty or new "
        f"directory."], result.stderr
    assert "Traceback" not in result.stderr
    assert "loaders: []" in result.stdout, "refused before any data or model code ran"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == \
        ["README.md", "checkpoint-1", "checkpoint-1/important.txt"]
    assert (out / "checkpoint-1" / "important.txt").read_text() == "x\n"
    assert (out / "README.md").read_text() == "notes\n"


def test_a_rerun_after_a_late_failure_reuses_the_directory_but_a_finished_run_is_kept(tmp_path):
    # Weights whose header is intact but whose data is cut short fail only once the model loads, after the run
    # directory was opened.
    broken = tmp_path / "broken-model"
    shutil.copytree(ensure_tiny(), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "run"
    with pytest.raises(Exception, match="(?i)safetensor|incomplete|buffer"):
        train(out, "trainer.max_steps=1", f"model.path={broken}")
    assert run_dir_kind(out) is RunDir.PREPARED, "the directory was opened, training never began"

    summary = train(out, "trainer.max_steps=1")  # same name, the model fixed
    assert run_dir_kind(out) is RunDir.STARTED
    finished = (Path(summary["final_model"]) / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run; continue it with resume=auto"):
        train(out, "trainer.max_steps=1")
    assert (Path(summary["final_model"]) / "model.safetensors").read_bytes() == finished


def test_resume_auto_of_a_finished_run_has_nothing_to_redo(tmp_path, monkeypatch, capsys):
    """A requeued job whose run finished meanwhile must not train it again: with save_steps 0 there is no checkpoint,
    and starting over would replace the finished model."""
    from align.run_dir import RunFinished
    from align.train import main

    out = tmp_path / "run"
    args = GRPO + [f"trainer.output_dir={out}", "trainer.max_steps=1", "resume=auto"]
    summary = run(compose(args))
    final = Path(summary["final_model"]) / "model.safetensors"
    finished, written = final.read_bytes(), final.stat().st_mtime_ns
    with pytest.raises(RunFinished, match="already finished at step 1 .*nothing to do"):
        run(compose(args))
    monkeypatch.setattr(sys, "argv", ["align-train", *args])
    main()  # the command line: one line, exit status 0
    assert "already finished at step 1" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="finished at step 1 without a checkpoint to continue from"):
        run(compose(args + ["trainer.max_steps=2"]))
    assert final.read_bytes() == finished and final.stat().st_mtime_ns == written


# --- rotation touches only this run's checkpoints ---------------------------------------------------------------------

def _checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * step)
    if complete:
        (folder / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    return folder


def test_rotation_deletes_only_complete_checkpoints_and_keeps_the_newest_and_the_best(tmp_path):
    for step in (1, 2, 3, 4):
        _checkpoint(tmp_path, step)
    for step in (100, 200):
        _checkpoint(tmp_path, step, complete=False)  # a foreign folder, or a save cut short
    rotate_checkpoints(tmp_path, 2, best=str(tmp_path / "checkpoint-1"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-100", "checkpoint-200",
                                                          "checkpoint-4"]
    rotate_checkpoints(tmp_path, None)
    assert len(list(tmp_path.iterdir())) == 4, "no limit, nothing deleted"


def test_foreign_checkpoint_folders_in_a_run_directory_survive_rotation(tmp_path):
    out = tmp_path / "run"
    claim_run_dir(out)  # e.g. left by a run that failed before training
    for step in (100, 200):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "notes.txt").write_text(str(step))
    train(out, "trainer.max_steps=3", "trainer.save_total_limit=1")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-200", "checkpoint-3"]
    assert (out / "checkpoint-200" / "notes.txt").read_text() == "200"


# --- verified checkpoints ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A run directory with complete checkpoints 1 and 2 (resume=auto)."""
    out = tmp_path_factory.mktemp("verified") / "run"
    train(out, "trainer.max_steps=2", "resume=auto")
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's data: the file still loads, with other numbers
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, file, problem", [
    (_truncate, "model.safetensors", r"model.safetensors has \d+ bytes, \d+ when saved"),
    (Path.unlink, "model.safetensors", "model.safetensors is missing"),
    (_truncate, "optimizer.pt", r"optimizer.pt has \d+ bytes, \d+ when saved"),
    (_flip_a_byte, "model.safetensors", r"model.safetensors has the recorded size but other bytes"),
])
def test_resume_falls_back_past_a_corrupt_checkpoint(two_checkpoints, tmp_path, caplog, capsys, damage, file,
                                                     problem):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    assert checkpoint_problem(out / "checkpoint-2") is None
    damage(out / "checkpoint-2" / file)
    with caplog.at_level(logging.WARNING, logger="align"):
        summary = train(out, "trainer.max_steps=3", "resume=auto")
    warnings = [r.getMessage() for r in caplog.records if "checkpoint-2 is corrupt" in r.getMessage()]
    assert len(warnings) == 1 and re.search(problem, warnings[0]), caplog.text
    assert "resume=auto: continuing from checkpoint-1" in capsys.readouterr().out
    assert len(list(out.glob("corrupt-checkpoint-2-*"))) == 1, "set aside, not deleted"
    assert sorted(losses(summary["run_dir"])) == [1, 2, 3], "step 2 trained again, then step 3"
    assert all(checkpoint_problem(out / f"checkpoint-{s}") is None for s in (1, 2, 3))


def test_a_corrupt_marker_or_flipped_json_is_reported(tmp_path):
    folder = _checkpoint(tmp_path, 3)
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": 3, "files": {
        "model.safetensors": {"size": 3, "sha256": "0" * 64}}}))
    assert checkpoint_problem(folder) == "model.safetensors has the recorded size but other bytes (its SHA-256 differs)"
    (folder / COMPLETE_MARKER).write_text("{")
    assert checkpoint_problem(folder).startswith(f"its {COMPLETE_MARKER} is unreadable")


# --- a full disk ------------------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs mounted for the test (needs root, or CAP_SYS_ADMIN), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a small filesystem to fill ({result.stderr.strip() or 'mount failed'})")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """A file that leaves `leave` bytes free on `disk`."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        while (free := shutil.disk_usage(disk).free) > leave:
            f.write(b"\0" * min(free - leave, 1 << 20))
            f.flush()
    return filler


@pytest.mark.parametrize("write", ["torch", "safetensors", "json"])
def test_every_way_a_full_disk_reports_itself_becomes_one_error(small_disk, write):
    from safetensors.torch import save_file

    _fill(small_disk, leave=1 << 16)
    tensors = {"w": torch.zeros(1 << 20)}  # 4 MiB
    target = small_disk / "checkpoint-7" / "file"
    target.parent.mkdir()
    save = {"torch": lambda: torch.save(tensors, target), "safetensors": lambda: save_file(tensors, target),
            "json": lambda: target.write_text(json.dumps(list(range(1 << 20))))}[write]
    with pytest.raises(DiskFullError) as err:
        with disk_full_reported(target.parent, small_disk):
            save()
    assert str(err.value).startswith(f"the disk is full: writing {target.parent} failed")
    assert "no checkpoint is complete yet" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not about space"):  # anything else passes unchanged
        with disk_full_reported(target.parent, small_disk):
            raise ValueError("not about space")


def test_a_full_disk_at_save_is_one_line_and_the_run_resumes_from_the_last_complete_checkpoint(small_disk):
    out = small_disk / "run"
    train(out, "trainer.max_steps=1", "resume=auto")
    # Room for the next checkpoint's weights, not for its optimizer state: torch's writer fails mid-file.
    filler = _fill(small_disk, leave=(out / "checkpoint-1" / "model.safetensors").stat().st_size + (1 << 20))
    with pytest.raises(DiskFullError) as err:
        train(out, "trainer.max_steps=2", "resume=auto")
    assert str(err.value) == (f"the disk is full: writing {out}/checkpoint-2 failed and it is not marked complete; "
                              f"the newest complete checkpoint is {out}/checkpoint-1. Free some space, then run "
                              f"again with resume=auto.")
    assert not (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    filler.unlink()
    summary = train(out, "trainer.max_steps=2", "resume=auto")
    assert sorted(losses(summary["run_dir"])) == [1, 2]
    assert list(out.glob("incomplete-checkpoint-2-*")), "the half-written checkpoint was set aside"
