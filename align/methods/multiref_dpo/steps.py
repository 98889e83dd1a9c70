"""Multi-reference DPO's run steps (align.registry).

prepare: pairs -> the policy's token ids (pairs over algorithm.data.max_length dropped) -> validation pairs carved
from training. build: every reference's log-probs on every split (each reference loaded at most once, one at a time,
cached on disk; none loaded on a cache hit) -> the policy -> the trainer.
"""

from __future__ import annotations

from pathlib import Path

from align.config import AlignConfig
from align.data import DataError
from align.data.preferences import load_reward_data
from align.files import cache_dir
from align.methods.common import build_policy, peft_config
from align.methods.multiref_dpo.config import MULTIREF_NEEDS_VALIDATION, reference_models
from align.methods.multiref_dpo.references import pinned_revision, reference_logps
from align.methods.multiref_dpo.trainer import (
    build_multiref_dpo_trainer,
    carve_validation,
    pairs_dataset,
    tokenize_pairs_dropping_long,
)
from align.models import ModelLoadError, load_tokenizer
from align.preemption import STOP
from align.registry import Built, Prepared, RunContext


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    algo = config.algorithm
    references = reference_models(algo)
    train_rows, held_out_rows, _ = load_reward_data(algo.data, "bradley_terry")
    max_length = algo.data.max_length
    train_rows, train_ids, dropped = tokenize_pairs_dropping_long(tokenizer, train_rows, max_length)
    held_out_rows, held_out_ids, dropped_held_out = tokenize_pairs_dropping_long(tokenizer, held_out_rows or [],
                                                                                 max_length)
    try:
        train_idx, val_idx = carve_validation(len(train_rows), algo.validation_size)
    except ValueError as err:
        raise DataError(f"{err} ({dropped} pairs longer than algorithm.data.max_length {max_length} were "
                        f"dropped)") from None
    splits = {"train": [train_rows[i] for i in train_idx]}
    if val_idx and algo.weighting in MULTIREF_NEEDS_VALIDATION:  # the others never read validation margins
        splits["validation"] = [train_rows[i] for i in val_idx]
    detail = (f"; {len(train_idx)} training pairs, {len(val_idx)} validation, {len(held_out_ids)} held out; "
              f"{len(references)} references")
    if dropped or dropped_held_out:
        detail += f"; {dropped + dropped_held_out} pairs over {max_length} tokens dropped"
    return Prepared(detail=detail, extra={"references": references, "splits": splits, "train_ids": train_ids,
                                          "train_idx": train_idx, "val_idx": val_idx, "held_out_ids": held_out_ids})


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    p = prepared.extra
    scored = precompute_references(p["references"], p["splits"], config.algorithm, run.state.is_main_process)
    train_dataset = pairs_dataset([p["train_ids"][i] for i in p["train_idx"]], scored["train"])
    validation = pairs_dataset([p["train_ids"][i] for i in p["val_idx"]], scored["validation"]) \
        if "validation" in scored else None
    held_out = pairs_dataset(p["held_out_ids"]) if p["held_out_ids"] else None

    def make_trainer(model, common_args):
        return build_multiref_dpo_trainer(model, tokenizer, train_dataset, config.algorithm,
                                          [r.name for r in p["references"]], common_args, validation=validation,
                                          eval_dataset=held_out, peft_config=peft_config(config))

    return build_policy(config, tokenizer, prepared, run, make_trainer)


def check_references(references) -> None:
    """Each reference resolves and has a chat template: fail before any reference is loaded and scored."""
    for i, reference in enumerate(references):
        try:
            revision = pinned_revision(reference.path, reference.revision)
            load_tokenizer(reference.path, revision=revision, trust_remote_code=reference.trust_remote_code,
                           chat_template=reference.chat_template)
        except ModelLoadError as err:
            message = str(err).replace("model.chat_template", f"algorithm.references[{i}].chat_template")
            raise ModelLoadError(f"algorithm.references[{i}] ('{reference.path}'): {message}") from None


def precompute_references(references, splits: dict[str, list[dict]], algo, announce: bool) -> dict[str, list]:
    """Split name -> one ReferenceLogps per reference: each reference loaded at most once (none on a cache hit),
    one at a time, and scoring every split. A stop signal ends the run once the reference being scored is cached."""
    directory = Path(algo.cache_dir).expanduser() if algo.cache_dir else cache_dir() / "reference_logps"
    STOP.phase = "reference scoring"
    check_references(references)
    scored = {name: [] for name in splits}
    for k, reference in enumerate(references, 1):
        results = reference_logps(reference, splits, normalize=algo.length_normalize,
                                  batch_size=algo.precompute_batch_size, cache_dir=directory)
        for name, result in results.items():
            scored[name].append(result)
            if announce:
                how = "cache hit" if result.cache_hit else f"computed ({result.seconds:.1f} s for all splits)"
                print(f"[align] reference {k}/{len(references)} {reference.name} ({name}, {len(splits[name])} "
                      f"pairs): {how} -> {result.cache_file}", flush=True)
        STOP.check(lambda k=k: f"the log-probs of {k} of {len(references)} references, cached in {directory}")
    return scored

