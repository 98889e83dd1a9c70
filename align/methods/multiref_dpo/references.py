"""Reference log-probs for multi-reference DPO, computed once and cached on disk.

Each reference scores every pair with its *own* tokenizer and chat template, one reference in memory at a time,
in length-sorted batches, with the rows sharded over the launch's processes. The result lands in
`<cache_dir>/<key>.safetensors` (tensors `chosen` and `rejected`, float64, one entry per pair) where `key` is a
fingerprint of

  the model       a local directory: its config/tokenizer files' contents and its weight files' names, sizes and
                  modification times (a copied model is a miss, never a wrong hit); a hub name: its commit,
  the token ids   exactly what the reference reads, so the tokenizer, chat template and data are all in it,
  the precision   the dtype the reference computes in,
  normalisation   length-normalised or summed log-probs,

so a later run with the same reference and data reads the file instead of loading the model, and any change to
one of the parts is a miss. Files are written atomically; a crash leaves no partial entry.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from huggingface_hub import HfApi, snapshot_download
from safetensors.torch import load_file, save_file
from trl.trainer.utils import add_fused_lm_head

from align.console import phase_progress
from align.distributed import local_device
from align.methods.multiref_dpo.math import sequence_logps
from align.models import (
    ModelLoadError,
    bf16_available,
    load_causal_lm,
    load_tokenizer,
    outside_zero3_init,
    resolve_dtype,
    resolve_model_path,
)
from align.tokens import chat_ids

log = logging.getLogger("align")

CACHE_FORMAT = "v1"  # bump when scoring changes, so older entries are never read
_CONTENT_HASHED = {".json", ".jinja", ".model", ".txt", ".tiktoken"}  # small files: hash their bytes


@dataclasses.dataclass
class ReferenceLogps:
    """One reference's log-probs of a split's pairs: (N,) chosen and rejected, and where they came from."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    cache_file: Path
    cache_hit: bool
    seconds: float


# --------------------------------------------------------------------------------------------------------------------
# Tokenization


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_token_ids(tokenizer, prompt: list[dict], chosen: str, rejected: str) -> dict[str, list[int]]:
    """The ids one model reads for a pair: `prompt_ids` (the chat template over the prompt messages with the
    generation prompt) and `chosen_ids` / `rejected_ids` (the rest of the rendering with the response as the
    assistant turn, end-of-turn tokens included). Where a template renders the prompt differently once a response
    follows, the response starts where the two renderings diverge. The policy and every reference go through
    this, each with its own tokenizer."""
    prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
    full = {name: chat_ids(tokenizer, [*prompt, {"role": "assistant", "content": text}])
            for name, text in (("chosen", chosen), ("rejected", rejected))}
    start = min(_common_prefix_length(prompt_ids, ids) for ids in full.values())
    return {"prompt_ids": prompt_ids[:start], "chosen_ids": full["chosen"][start:],
            "rejected_ids": full["rejected"][start:]}


def pair_length(ids: dict[str, list[int]]) -> int:
    """Tokens of the longer of the pair's two sequences (prompt + response)."""
    return len(ids["prompt_ids"]) + max(len(ids["chosen_ids"]), len(ids["rejected_ids"]))


# --------------------------------------------------------------------------------------------------------------------
# Fingerprints


def pinned_revision(path: str, revision: str | None = None) -> str | None:
    """The exact commit a hub name resolves to (asked online first, else the local hub cache), so that the
    fingerprint and the weights actually loaded are the same commit; local paths keep `revision` as given.

    Raises ModelLoadError when a hub name can be resolved neither online nor from the local hub cache."""
    if Path(resolve_model_path(path)).is_dir():
        return revision
    try:
        return HfApi().model_info(path, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline, or the hub is unreachable: the commit cached locally
        try:
            return Path(snapshot_download(path, revision=revision, local_files_only=True,
                                          allow_patterns=["*.json"])).name  # the snapshot folder is the commit
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"Cannot resolve reference '{path}' (revision {revision or 'main'}): it is not a "
                                 f"local directory, the hub could not be reached and it is not in the local hub "
                                 f"cache ({err.__class__.__name__}). Check the name, or download it first.") from err


def model_fingerprint(path: str, revision: str | None = None) -> str:
    """A string that changes whenever the weights `path` names may have changed (see the module docstring); for a
    hub name `revision` should be the commit from `pinned_revision`."""
    local = Path(resolve_model_path(path))
    if not local.is_dir():
        return f"hub:{path}@{revision}"
    entries = []
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        stat, relative = file.stat(), str(file.relative_to(local))
        if file.suffix in _CONTENT_HASHED:
            entries.append([relative, hashlib.sha256(file.read_bytes()).hexdigest()])
        else:
            entries.append([relative, stat.st_size, stat.st_mtime_ns])
    return "local:" + hashlib.sha256(json.dumps([str(local.resolve()), entries]).encode()).hexdigest()


def cache_key(model_id: str, pairs: list[dict[str, list[int]]], normalize: bool) -> str:
    h = hashlib.sha256(json.dumps([CACHE_FORMAT, model_id, normalize]).encode())
    for ids in pairs:
        h.update(json.dumps([ids["prompt_ids"], ids["chosen_ids"], ids["rejected_ids"]]).encode())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_sequences(model, sequences: list[tuple[list[int], list[int]]], *, batch_size: int, normalize: bool,
                    pad_token_id: int, device: torch.device, progress: str | None = None) -> torch.Tensor:
    """(context ids, response ids) per sequence -> (N,) float64 log-probs of the responses (length-normalised when
    `normalize`). Batches are formed over length-sorted sequences to keep padding small. `model` must carry TRL's
    fused LM head (`trl.trainer.utils.add_fused_lm_head`), so no (batch, length, vocab) logits are built.
    `progress`: the name of a progress bar over the batches (`align.console.phase_progress`), None for none."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    out = torch.empty(len(sequences), dtype=torch.float64)
    for start in phase_progress(range(0, len(order), batch_size), progress):
        batch = [sequences[i] for i in order[start:start + batch_size]]
        width = max(len(c) + len(r) for c, r in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        response = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (context, answer) in enumerate(batch):
            n, m = len(context), len(answer)
            input_ids[row, :n + m] = torch.tensor(context + answer)
            attention[row, :n + m] = 1
            response[row, n:n + m] = 1
        input_ids, attention, response = input_ids.to(device), attention.to(device), response.to(device)
        labels = input_ids.masked_fill(response == 0, -100)
        per_token = model(input_ids=input_ids, attention_mask=attention, labels=labels, use_cache=False,
                          fused_lm_head=True).log_probs
        shifted = response[:, 1:]
        logps = sequence_logps(per_token[:, -shifted.shape[1]:].double(), shifted.double(), normalize)
        out[torch.tensor(order[start:start + batch_size])] = logps.cpu()
    return out


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gathered(value) -> list:
    """`value` from every process, in rank order (a single process: [value])."""
    rank, world = _distributed()
    if world == 1:
        return [value]
    gathered = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def _write_atomic(path: Path, chosen: torch.Tensor, rejected: torch.Tensor, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique staging name: first processes of several nodes may write the same entry into a shared directory.
    handle, staging = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(staging), metadata=metadata)
    os.replace(staging, path)


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(str(path))
    return tensors["chosen"], tensors["rejected"]


def reference_logps(reference, splits: dict[str, list[dict]], *, normalize: bool, batch_size: int,
                    cache_dir: Path) -> dict[str, ReferenceLogps]:
    """Split name -> log-probs of its rows (prompt messages, chosen, rejected) under `reference` (a
    ReferenceModelConfig), each split from the cache or computed now, the model loaded at most once.

    Collective under a distributed launch: every process must call it with the same splits. The processes first
    check that they fingerprint the reference identically (else they would train against different numbers); each
    then scores its share of the rows, every process gets the full result, and the first process of each node
    writes the cache entries (so nodes without a shared cache directory each keep a copy)."""
    started = time.perf_counter()
    revision = pinned_revision(reference.path, reference.revision)
    tokenizer = load_tokenizer(reference.path, revision=revision, trust_remote_code=reference.trust_remote_code,
                               chat_template=reference.chat_template)
    # Inference only: bf16 wherever the GPU supports it (training's "auto" keeps fp32 master weights under DDP).
    # The precision changes the numbers, so it is part of the model's identity.
    dtype = "bfloat16" if reference.dtype == "auto" and bf16_available() else reference.dtype
    model_id = f"{model_fingerprint(reference.path, revision)}|{resolve_dtype(dtype)}"
    pairs = {name: [pair_token_ids(tokenizer, r["prompt"], r["chosen"], r["rejected"]) for r in rows]
             for name, rows in splits.items()}
    paths = {name: Path(cache_dir) / f"{cache_key(model_id, ids, normalize)}.safetensors"
             for name, ids in pairs.items()}
    keys = _gathered(sorted(str(p.name) for p in paths.values()))
    if any(k != keys[0] for k in keys):
        raise RuntimeError(f"The processes of this launch fingerprint reference '{reference.path}' differently "
                           f"(different local copies or hub caches?); give every node the same copy.")
    hits = {name: all(_gathered(path.is_file())) for name, path in paths.items()}
    results = {name: ReferenceLogps(*_read(paths[name]), paths[name], True, 0.0) for name in splits if hits[name]}
    missing = [name for name in splits if not hits[name]]
    if missing:
        scored = _score_splits(reference, revision, dtype, tokenizer, {name: pairs[name] for name in missing},
                               normalize=normalize, batch_size=batch_size)
        for name, (chosen, rejected) in scored.items():
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                _write_atomic(paths[name], chosen, rejected,
                              {"model": reference.path, "model_id": model_id, "split": name,
                               "normalize": str(normalize), "pairs": str(len(chosen)), "format": CACHE_FORMAT})
            results[name] = ReferenceLogps(chosen, rejected, paths[name], False, 0.0)
        _barrier()
    seconds = time.perf_counter() - started
    return {name: dataclasses.replace(results[name], seconds=seconds) for name in splits}


def _score_splits(reference, revision: str | None, dtype: str, tokenizer, pairs: dict[str, list[dict]], *,
                  normalize: bool, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load the reference once, score this process's share of every split's pairs, free it, and assemble every
    process's shares: split name -> (N,) chosen and rejected log-probs."""
    rank, world = _distributed()
    device = local_device()
    with outside_zero3_init():
        model = load_causal_lm(reference.path, dtype=dtype, revision=revision,
                               trust_remote_code=reference.trust_remote_code)
    model.to(device).eval()
    add_fused_lm_head(model)
    shares = {}
    for name, ids in pairs.items():
        mine = list(range(rank, len(ids), world))
        sequences = [(ids[i]["prompt_ids"], ids[i][side]) for i in mine for side in ("chosen_ids", "rejected_ids")]
        shares[name] = (mine, score_sequences(model, sequences, batch_size=batch_size, normalize=normalize,
                                              pad_token_id=tokenizer.pad_token_id, device=device,
                                              progress=f"reference {reference.name} ({name})" if rank == 0 else None))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    assembled = {}
    for name, ids in pairs.items():
        chosen = torch.empty(len(ids), dtype=torch.float64)
        rejected = torch.empty(len(ids), dtype=torch.float64)
        for indices, values in _gathered(shares[name]):
            chosen[indices], rejected[indices] = values[0::2], values[1::2]
        assembled[name] = (chosen, rejected)
    return assembled


def _barrier() -> None:
    if _distributed()[1] > 1:
        dist.barrier()
