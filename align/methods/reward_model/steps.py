"""The reward model's run steps (align.registry): preference pairs or feedback rows, then a sequence-classification
model and the trainer for the objective. The final model is a safetensors checkpoint whose config.json records the
objective, the head and what scoring needs (anchor thresholds, noise rates); `reward=reward_model` scores with it."""

from __future__ import annotations

from align.config import AlignConfig
from align.data.preferences import load_reward_data
from align.methods.common import training_arguments
from align.methods.reward_model.trainer import build_reward_model_trainer
from align.preemption import STOP
from align.registry import Built, Prepared, RunContext
from align.rewards.reward_model import load_reward_model


def prepare(config: AlignConfig, tokenizer) -> Prepared:
    algo = config.algorithm
    train_rows, held_out_rows, info = load_reward_data(algo.data, algo.objective)
    detail = f"; {len(train_rows)} training rows" + (f", {len(held_out_rows)} held out" if held_out_rows else "")
    if info.get("dropped_ties"):
        detail += f"; {info['dropped_ties']} tied pairs dropped"
    return Prepared(train_dataset=train_rows, held_out=held_out_rows, detail=detail)


def build(config: AlignConfig, tokenizer, prepared: Prepared, run: RunContext) -> Built:
    STOP.phase = "model loading"
    model = load_reward_model(run.model_path, config.algorithm.objective, dtype=config.model.dtype,
                              revision=config.model.revision, trust_remote_code=config.model.trust_remote_code,
                              attn_implementation=config.model.attn_implementation)
    common = training_arguments(config, run.dir, run.report_to, run.name)
    return Built(build_reward_model_trainer(model, tokenizer, prepared.train_dataset, prepared.held_out,
                                            config.algorithm, common))
