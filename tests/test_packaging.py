"""A built wheel carries the Hydra configs and recipes: align runs without the repository checkout."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_wheel_runs_without_the_repository(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without network needs setuptools in the venv")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("align-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # shadows the editable install
    result = subprocess.run([sys.executable, "-m", "align.train", "recipe=grpo-arithmetic-tiny", "--cfg", "job"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sloppy_fraction: 0.5" in result.stdout
    located = subprocess.run([sys.executable, "-c", "import align; print(align.__file__)"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True)
    assert located.stdout.startswith(str(tmp_path / "site")), "the test must exercise the installed wheel"
