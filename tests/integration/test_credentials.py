"""Credentials given in config or on the command line never reach a file, a tracker or the console.

Distinctive values are planted under credential-like names (a reward source's kwargs, `+trainer.trl.hub_token`);
then every byte a run, a sweep, a W&B offline run, TensorBoard and a failing run write (under the working
directory, the run and sweep directories, W&B's directories) and everything they print is searched for them.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

PLANTED = b"SENTINEL-"
SECRETS = {"secret_key": "SENTINEL-secret_key-7f3a", "private_key": "SENTINEL-private_key-7f3a",
           "aws_secret_access_key": "SENTINEL-aws-7f3a", "auth_header": "Bearer SENTINEL-auth_header-7f3a"}
NESTED_PASSWORD = "SENTINEL-password-7f3a"
# Values that a text rule would cut short: unquoted with a space, a list, a URL's user information; and `creds`.
UNQUOTED = {"headers": "{Authorization: Bearer SENTINEL-bearer-7f3a}", "api_keys": "[SENTINEL-list-a, SENTINEL-list-b]",
            "creds": "SENTINEL-creds-7f3a", "endpoint": "'https://user:SENTINEL-url-7f3a@host/v1'"}
RECEIVED = {"headers": {"Authorization": "Bearer SENTINEL-bearer-7f3a"},
            "api_keys": ["SENTINEL-list-a", "SENTINEL-list-b"], "creds": "SENTINEL-creds-7f3a",
            "endpoint": "https://user:SENTINEL-url-7f3a@host/v1"}


def keyed_reward(prompts, completions, secret_key, private_key, aws_secret_access_key, auth_header, connection,
                 fail=False, **kwargs):
    """A reward source configured with credentials, which reach it intact: only what is written is redacted.
    `fail`: log a metric that is not a number, which breaks TRL's metric averaging after the first generation (a
    late internal error, for which Hydra prints its "Error executing job with overrides" line)."""
    received = {"secret_key": secret_key, "private_key": private_key, "aws_secret_access_key": aws_secret_access_key,
                "auth_header": auth_header}
    assert received == SECRETS and connection == {"password": NESTED_PASSWORD}, received
    assert {name: kwargs[name] for name in RECEIVED} == RECEIVED, kwargs
    if fail:
        kwargs["log_metric"]("keyed", "not a number")
    return [0.0] * len(completions)


def reward_with_credentials(fail: bool = False) -> str:
    kwargs = ", ".join([*(f"{name}: '{value}'" for name, value in SECRETS.items()),
                        *(f"{name}: {value}" for name, value in UNQUOTED.items())])
    return (f"reward.sources=[{{name: '{__name__}:keyed_reward', kwargs: {{{kwargs}, "
            f"connection: {{password: {NESTED_PASSWORD}}}, fail: {str(fail).lower()}}}}}]")


TINY = ["trainer.max_steps=1", "trainer.per_device_train_batch_size=4", "algorithm.num_generations=4",
        "algorithm.max_completion_length=4", "eval.enabled=false", "data.synthetic.num_train=8"]


def align_train(cwd, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """`python -m align.train` run from `cwd`, with W&B's directories under it too."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
           **{f"WANDB_{kind}_DIR": str(cwd / "wandb-home" / kind) for kind in ("CACHE", "CONFIG", "DATA")}}
    return subprocess.run([sys.executable, "-m", "align.train", *(["-m"] if multirun else []),
                           f"trainer.output_root={cwd / 'runs'}", *TINY, *overrides],
                          cwd=cwd, env=env, capture_output=True, timeout=600, check=False)


def files_with_planted_values(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and PLANTED in path.read_bytes())


@pytest.mark.slow
def test_no_credential_is_written_logged_or_printed(tmp_path):
    tracked = align_train(tmp_path, "logger=wandb", "trainer.run_name=tracked", "trainer.save_steps=1",
                          reward_with_credentials(), "+trainer.trl.hub_token=SENTINEL-hub_token-7f3a")
    assert tracked.returncode == 0, tracked.stderr.decode()[-3000:]
    sweep = align_train(tmp_path, "logger=tensorboard", reward_with_credentials(),
                        "+trainer.trl.hub_token=SENTINEL-hub_token-0,SENTINEL-hub_token-1", multirun=True)
    assert sweep.returncode == 0, sweep.stderr.decode()[-3000:]
    failed = align_train(tmp_path, "trainer.run_name=failed", reward_with_credentials(fail=True),
                         "+trainer.trl.hub_token=SENTINEL-hub_token-7f3a")
    assert failed.returncode == 1 and b"Error executing job with overrides" in failed.stderr, failed.stderr[-3000:]

    runs = tmp_path / "runs"
    assert b"<redacted>" in (runs / "tracked" / "config.yaml").read_bytes()
    assert list((runs / "tracked").glob("wandb/offline-run-*/run-*.wandb"))
    assert list((runs / "tracked" / "checkpoint-1").glob("training_args.bin"))
    assert list(runs.glob("sweeps/*/multirun.yaml")) and len(list(runs.glob("*/tensorboard/**/*tfevents*"))) == 2
    assert files_with_planted_values(tmp_path) == []
    for result in (tracked, sweep, failed):
        assert PLANTED not in result.stdout + result.stderr
