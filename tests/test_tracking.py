from align.tracking import REDACTED, redact


def test_redact_replaces_credential_like_values_at_any_depth():
    config = {"logger": {"project": "align", "api_key": "abc"}, "reward": {"sources": [{"kwargs": {"hf_token": "x",
              "threshold": 1}}]}, "password": None, "eval": {"max_new_tokens": 64}, "model": {"tokenizer_path": "t"}}
    clean = redact(config)
    assert clean["eval"] == {"max_new_tokens": 64} and clean["model"] == {"tokenizer_path": "t"}
    assert clean["logger"] == {"project": "align", "api_key": REDACTED}
    assert clean["reward"]["sources"][0]["kwargs"] == {"hf_token": REDACTED, "threshold": 1}
    assert clean["password"] is None  # nothing to hide
    assert config["logger"]["api_key"] == "abc", "the input is not modified"
