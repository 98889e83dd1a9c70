import dataclasses
import io
import logging

import pytest
import torch
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from align.tracking import REDACTED, RedactCredentials, is_secret_key, redact, redact_override, redact_text
from tests.conftest import REPO, compose


def test_redact_replaces_credential_like_values_at_any_depth():
    config = {"logger": {"project": "align", "api_key": "abc"}, "reward": {"sources": [{"kwargs": {"hf_token": "x",
              "threshold": 1}}]}, "password": None, "eval": {"max_new_tokens": 64}, "model": {"tokenizer_path": "t"}}
    clean = redact(config)
    assert clean["eval"] == {"max_new_tokens": 64} and clean["model"] == {"tokenizer_path": "t"}
    assert clean["logger"] == {"project": "align", "api_key": REDACTED}
    assert clean["reward"]["sources"][0]["kwargs"] == {"hf_token": REDACTED, "threshold": 1}
    assert clean["password"] is None  # nothing to hide
    assert config["logger"]["api_key"] == "abc", "the input is not modified"


# --- The one rule for credential-like keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["secret_key", "private_key", "aws_secret_access_key", "auth_header", "hub_token",
                                  "api_key", "apiKey", "password", "db_passwd", "HF_TOKEN", "session_cookie",
                                  "credentials", "key", "bearer", "+trainer.trl.hub_token", "tokenizer_secret"])
def test_credential_like_names_are_secret(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["max_new_tokens", "max_tokens", "max_prompt_tokens", "num_tokens", "tokens_per_s",
                                  "pad_token", "eos_token", "bos_token", "eos_token_id", "pad_token_ids", "tokenizer",
                                  "tokenizer_path", "eval.max_new_tokens", "learning_rate", "name"])
def test_harmless_names_are_not_secret(name):
    assert not is_secret_key(name)


def _keys(node, found: set) -> set:
    if isinstance(node, dict):
        for key, value in node.items():
            found.add(str(key))
            _keys(value, found)
    elif isinstance(node, list):
        for value in node:
            _keys(value, found)
    return found


def test_among_every_recipe_hydra_and_trl_key_only_hub_token_is_secret():
    """Walks every key of every composed recipe, of Hydra's own config (both launchers) and every field of TRL's
    config classes: a harmless key that the rule would hide belongs on its allow-list."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from trl import DPOConfig, GRPOConfig, RewardConfig, SFTConfig

    keys = set()
    for recipe in sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")):
        _keys(OmegaConf.to_container(compose([f"recipe={recipe}"]), resolve=False), keys)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        for launcher in ("local", "slurm"):
            hydra = hydra_compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True).hydra
            _keys(OmegaConf.to_container(hydra, resolve=False), keys)
    for trl_class in (GRPOConfig, DPOConfig, RewardConfig, SFTConfig):
        keys |= {f.name for f in dataclasses.fields(trl_class)}
    assert {"max_new_tokens", "pad_token", "exclude_keys"} <= keys, "the walk reached nested keys"
    assert {key for key in keys if is_secret_key(key)} == {"hub_token"}


def test_overrides_and_printed_text_hide_credential_values():
    assert redact_override("+trainer.trl.hub_token=abc,def") == "+trainer.trl.hub_token=<redacted>"
    assert redact_override("trainer.seed=1,2") == "trainer.seed=1,2"
    assert redact_override("reward.sources=[{name: x, kwargs: {secret_key: abc, threshold: 1, auth: 'a b'}}]") == \
        "reward.sources=[{name: x, kwargs: {secret_key: <redacted>, threshold: 1, auth: <redacted>}}]"
    assert redact_override("reward.sources=[{name:x,kwargs:{private_key:abc}}]") == \
        "reward.sources=[{name:x,kwargs:{private_key:<redacted>}}]"
    assert redact_override("reward.sources=[{name: my.auth_rewards:score}]") == \
        "reward.sources=[{name: my.auth_rewards:score}]", "an import path is not a dict key"
    assert redact_text("""overrides: ['+trainer.trl.hub_token=abc', "k={api_key: 'x'}", 'eval.max_new_tokens=8']""") \
        == """overrides: ['+trainer.trl.hub_token=<redacted>', "k={api_key: <redacted>}", 'eval.max_new_tokens=8']"""
    assert redact_text('{"password": "p", "pad_token": "<pad>"}') == '{"password": <redacted>, "pad_token": "<pad>"}'


def test_trl_arguments_log_and_pickle_without_credentials(tmp_path):
    """What transformers' W&B / TensorBoard callbacks log (to_dict, to_json_string, to_sanitized_dict) and the
    training_args.bin pickle in each checkpoint; the trainer itself keeps the real values."""
    from align.trainers.grpo import AlignGRPOConfig

    args = AlignGRPOConfig(output_dir=str(tmp_path), hub_token="hub-secret", report_to=[], use_cpu=True, bf16=False,
                           model_init_kwargs={"token": "nested-secret", "revision": "main"})
    assert args.hub_token == "hub-secret" and args.model_init_kwargs["token"] == "nested-secret"
    assert args.to_dict()["model_init_kwargs"] == {"token": "<redacted>", "revision": "main"}
    pickled = io.BytesIO()
    torch.save(args, pickled)
    for written in (args.to_json_string(), str(args.to_sanitized_dict()), pickled.getvalue().decode("latin-1")):
        assert "secret" not in written


def test_hydra_error_line_and_launcher_log_lines_hide_credentials(caplog):
    callback = RedactCredentials()
    job = JobReturn(overrides=["+trainer.trl.hub_token=abc", "trainer.seed=1"])
    callback.on_job_end(config=OmegaConf.create(), job_return=job)
    assert job.overrides == ["+trainer.trl.hub_token=<redacted>", "trainer.seed=1"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").info("\t#0 : +trainer.trl.hub_token=abc")
    assert caplog.messages == ["\t#0 : +trainer.trl.hub_token=<redacted>"]
