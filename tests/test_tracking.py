import copy
import dataclasses
import io
import logging
import subprocess
import sys

import pytest
import torch
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from align.tracking import REDACTED, RedactCredentials, is_secret_key, redact, redact_override, redact_text
from tests.conftest import REPO, compose

HIDDEN = "'<redacted>'"  # how an override shows a hidden value: quoted, so that Hydra parses the override again


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
                                  "credentials", "creds", "db_cred", "Authorization", "author_api_key",
                                  "bearer", "+trainer.trl.hub_token", "tokenizer_secret",
                                  "key"])  # a client's credential (`kwargs: {key: ...}`); no align/TRL/Hydra setting
def test_credential_like_names_are_secret(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["max_new_tokens", "max_tokens", "max_prompt_tokens", "num_tokens", "tokens_per_s",
                                  "pad_token", "eos_token", "bos_token", "eos_token_id", "pad_token_ids", "tokenizer",
                                  "tokenizer_path", "eval.max_new_tokens", "learning_rate", "name",
                                  "skip_special_tokens", "add_special_tokens", "additional_special_tokens", "author",
                                  "authors", "keyword", "keywords", "session_len", "session_length",
                                  "credit_assignment"])
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


def parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_overrides([override])
    except HydraException:
        return False
    return True


@pytest.mark.parametrize(("override", "redacted"), [
    ("+trainer.trl.hub_token=abc,def", f"+trainer.trl.hub_token={HIDDEN}"),
    ("trainer.seed=1,2", "trainer.seed=1,2"),
    ("trainer.seed=range(1,3)", "trainer.seed=range(1,3)"),
    ("~trainer.trl.hub_token", "~trainer.trl.hub_token"),
    ("reward.sources=[{name: x, kwargs: {secret_key: abc, threshold: 1, auth: 'a b'}}]",
     f"reward.sources=[{{name: x, kwargs: {{secret_key: {HIDDEN}, threshold: 1, auth: {HIDDEN}}}}}]"),
    ("reward.sources=[{name:x,kwargs:{private_key:abc}}]",
     f"reward.sources=[{{name: x, kwargs: {{private_key: {HIDDEN}}}}}]"),
    # A value with spaces, a list value, a sweep's every choice, quoted strings kept as typed.
    ("reward.sources=[{name: x, kwargs: {Authorization: Bearer S3CRET}}]",
     f"reward.sources=[{{name: x, kwargs: {{Authorization: {HIDDEN}}}}}]"),
    ("reward.sources=[{name: 'my.auth:score', kwargs: {api_key: [S3CRET, b], n: '1'}}]",
     f"reward.sources=[{{name: 'my.auth:score', kwargs: {{api_key: {HIDDEN}, n: '1'}}}}]"),
    ("k={creds: a},{creds: b}", f"k={{creds: {HIDDEN}}}, {{creds: {HIDDEN}}}"),
    ("k=choice({token: a},{token: b})", f"k=choice({{token: {HIDDEN}}}, {{token: {HIDDEN}}})"),
    ("reward.sources=[{name: my.auth_rewards:score}]", "reward.sources=[{name: my.auth_rewards:score}]"),
])
def test_overrides_are_parsed_and_hide_credential_values_whole(override, redacted):
    assert redact_override(override) == redacted
    assert parses(redacted), "Hydra parses the redacted override again"


def test_overrides_that_do_not_parse_hide_everything_after_a_credential_key():
    # Everything up to the end of the bracketed value: unparsed text cannot tell a comma inside a value from one
    # between items.
    assert redact_override("k={'x: [api_key: S3CRET, b], n: 1}") == "k={'x: [api_key: <redacted>], n: 1}"
    assert redact_override("k={api_key: S3CRET, b") == "k={api_key: <redacted>"


def test_url_user_information_is_hidden_in_text_overrides_and_config_values():
    assert redact({"endpoint": "https://user:S3CRET@host/v1", "url": "https://host/a@b"}) == \
        {"endpoint": "https://<redacted>@host/v1", "url": "https://host/a@b"}
    assert redact_override("+reward.url=https://ghp_S3CRET@github.com/x") == "+reward.url=https://<redacted>@github.com/x"
    assert redact_text("cloning git+https://u:p@host/r.git") == "cloning git+https://<redacted>@host/r.git"


def test_printed_text_hides_credential_values():
    assert redact_text("""overrides: ['+trainer.trl.hub_token=abc', "k={api_key: 'x'}", 'eval.max_new_tokens=8']""") \
        == """overrides: ['+trainer.trl.hub_token=<redacted>', "k={api_key: <redacted>}", 'eval.max_new_tokens=8']"""
    assert redact_text('{"password": "p", "pad_token": "<pad>"}') == '{"password": <redacted>, "pad_token": "<pad>"}'
    # A launcher's line: overrides joined by spaces, values with spaces.
    assert redact_text("#0 : r=[{kwargs: {Authorization: Bearer S3CRET}}] +trainer.trl.hub_token=Bearer S3 seed=1") \
        == "#0 : r=[{kwargs: {Authorization: <redacted>}}] +trainer.trl.hub_token=<redacted> seed=1"
    assert redact_text("{api_key: [S3CRET, b]}") == "{api_key: <redacted>}"
    assert redact_text("Either remove + prefix: 'trainer.trl.hub_token=B'") == \
        "Either remove + prefix: 'trainer.trl.hub_token=<redacted>'"


@pytest.mark.parametrize("multirun", [[], ["-m", "trainer.seed=1,2"]])
def test_the_cli_error_line_hides_credentials(multirun):
    """Hydra names the repeated override, value included, in its composition error; align's one error line hides it
    (a sweep keeps only the last of a repeated key: the error must still come from align, not from Hydra)."""
    result = subprocess.run([sys.executable, "-m", "align.train", *multirun, "+trainer.trl.hub_token=S3CRET-A",
                             "+trainer.trl.hub_token=S3CRET-B"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 2 and result.stderr.startswith("align: error: "), result.stderr
    assert "trainer.trl.hub_token=<redacted>" in result.stderr and "S3CRET" not in result.stdout + result.stderr


def test_trl_arguments_log_and_pickle_without_credentials_and_copy_with_them(tmp_path):
    """What transformers' W&B / TensorBoard callbacks log (to_dict, to_json_string, to_sanitized_dict) and every
    pickle (training_args.bin in each checkpoint and W&B's model artifact); the trainer itself keeps the real values,
    and so do copies: transformers' W&B callback deep-copies the arguments for a trainer it runs (WANDB_LOG_MODEL)."""
    from align.methods.grpo.trainer import AlignGRPOConfig

    args = AlignGRPOConfig(output_dir=str(tmp_path), hub_token="hub-secret", report_to=[], use_cpu=True, bf16=False,
                           model_init_kwargs={"token": "nested-secret", "revision": "main"})
    assert args.hub_token == "hub-secret" and args.model_init_kwargs["token"] == "nested-secret"
    assert args.to_dict()["model_init_kwargs"] == {"token": "<redacted>", "revision": "main"}
    for copied in (copy.deepcopy(args), copy.copy(args)):
        assert type(copied) is type(args) and copied == args
        assert copied.hub_token == "hub-secret" and copied.model_init_kwargs["token"] == "nested-secret"
    deep = copy.deepcopy(args)
    assert deep.model_init_kwargs is not args.model_init_kwargs, "a deep copy"
    for pickled_args in (args, deep):
        pickled = io.BytesIO()
        torch.save(pickled_args, pickled)
        assert b"secret" not in pickled.getvalue()
    for written in (args.to_json_string(), str(args.to_sanitized_dict())):
        assert "secret" not in written


def test_hydra_error_line_and_launcher_log_lines_hide_credentials(caplog):
    callback = RedactCredentials()
    job = JobReturn(overrides=["+trainer.trl.hub_token=abc", "trainer.seed=1"])
    callback.on_job_end(config=OmegaConf.create(), job_return=job)
    assert job.overrides == [f"+trainer.trl.hub_token={HIDDEN}", "trainer.seed=1"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").info("\t#0 : +trainer.trl.hub_token=abc")
    assert caplog.messages == ["\t#0 : +trainer.trl.hub_token=<redacted>"]
