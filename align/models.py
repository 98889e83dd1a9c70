"""Tokenizer and model loading, plus the embedded tiny default.

The embedded default (`model.path: embedded:tiny`) is a byte-level Qwen2 tokenizer without merges, a Qwen-style
chat template, and a randomly initialised 4-layer Qwen2 causal LM (about 0.8M parameters). Both are built
deterministically from this file in a few seconds and cached under `$ALIGN_CACHE` (default `~/.cache/align`), so
nothing touches the network. Every other path is handed to `transformers` unchanged: a local directory or a hub name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
TINY = "embedded:tiny"
# Bump when the tiny tokenizer or architecture changes so stale caches are rebuilt, never reused.
_TINY_VERSION = "v1"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded as configured; the message says why and what to change."""


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align"))


def build_tiny_tokenizer():
    """A real Qwen2 byte-level BPE tokenizer with no merges: every byte is one token (259 ids in all).

    Digits, spaces and newlines each get their own token, which keeps arithmetic easy for a tiny model, and the
    tokenizer round-trips through `AutoTokenizer` exactly like a released Qwen2 checkpoint.
    """
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + byte_symbols)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int = 0):
    """A small Qwen2 decoder with random weights; the same seed gives bit-identical weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def ensure_tiny(root: Path | None = None) -> Path:
    """Build the embedded tiny tokenizer + model once and return their directory.

    Safe under concurrent ranks: each builder writes to a private temporary directory and renames it into place;
    the loser of the race discards its copy.
    """
    target = (root or cache_dir()) / f"tiny-{_TINY_VERSION}"
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging, safe_serialization=True)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(path: str) -> str:
    """Map `embedded:*` names to their built directory; check that local-looking paths exist.

    Hub names (`org/name`) are returned unchanged; whether they resolve is up to the hub (or its offline cache).
    """
    if path.startswith(EMBEDDED_PREFIX):
        if path != TINY:
            raise ModelLoadError(f"Unknown embedded model '{path}'. The embedded model is '{TINY}'.")
        return str(ensure_tiny())
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    # Hub names are `name` or `org/name`; anything else is meant as a local path.
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ModelLoadError(
            f"Model path '{path}' does not exist. Give an existing local directory, a hub name such as "
            f"'Qwen/Qwen2.5-0.5B-Instruct', or '{TINY}' for the embedded tiny model."
        )
    return path


def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_dtype(name: str) -> torch.dtype:
    """The dtype weights are *loaded* in. `auto`: bf16 under DeepSpeed on a bf16 GPU (DeepSpeed keeps fp32 master
    weights), fp32 everywhere else: under DDP the optimizer updates the loaded weights themselves, and lr-1e-6
    updates round away in bf16, so the compute runs in bf16 through autocast instead (`mixed_precision_flags`)."""
    if name == "auto":
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        return torch.bfloat16 if bf16_available() and deepspeed else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise ModelLoadError(f"model.dtype '{name}' is not one of auto, float32, bfloat16, float16.") from None


def mixed_precision_flags(name: str) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16 flags for `model.dtype` (CPU: neither; TRL's own default would be bf16)."""
    dtype = name if name != "auto" else ("bfloat16" if bf16_available() else "float32")
    return {"bf16": resolve_dtype(dtype) == torch.bfloat16, "fp16": resolve_dtype(dtype) == torch.float16}


def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                   chat_template: str | None = None):
    """Load a tokenizer that can render chats: left padding for generation, a pad token, a chat template."""
    from transformers import AutoTokenizer

    resolved = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:  # transformers' "not a local folder and not a valid model identifier", offline hub, ...
        raise ModelLoadError(
            f"Cannot load the tokenizer of '{path}': it is not an existing local directory, and the hub could not "
            f"provide it ({err.__class__.__name__}: {str(err).splitlines()[0]}). Check model.path, your network / "
            f"HF_HUB_OFFLINE, or use '{TINY}'."
        ) from err
    if chat_template:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ModelLoadError(
            f"The tokenizer of '{path}' has no chat template. Set `model.chat_template` to a Jinja template, or use "
            f"an instruct/chat checkpoint that ships one."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(path: str, *, dtype: str = "auto", revision: str | None = None, trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
    """Load a causal LM from safetensors only (pickle checkpoints are refused)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(
        resolve_model_path(path), dtype=resolve_dtype(dtype), revision=revision,
        trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs,
    )
