"""The Slurm cluster every test under tests/cluster that needs one shares (started once per session)."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SETUP = REPO / "launch" / "slurm" / "setup-test-cluster.sh"


def slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


@pytest.fixture(scope="session")
def slurm():
    """A working Slurm: the one already up, else the single-node test cluster (started here, as root)."""
    if not slurm_up() and os.geteuid() != 0:
        pytest.skip("Slurm is not running and starting the test cluster needs root (sudo "
                    "launch/slurm/setup-test-cluster.sh, then rerun)")
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
