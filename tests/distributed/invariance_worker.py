"""Trains AlignGRPOTrainer for a few steps on deterministic rollouts and writes losses + a weight fingerprint.

    [accelerate launch ...] python tests/distributed/invariance_worker.py OUT.json BATCH ACCUMULATION

Generation is replaced by a deterministic `rollout_func` (completion j of a prompt's group is fixed), so any
difference between process/batch layouts of the same global batch comes from the training math alone.
"""

import json
import sys
from pathlib import Path

from trl import GRPOConfig

from align.config import AlignConfig, DataConfig, RewardSourceConfig, SyntheticConfig
from align.data import load_splits
from align.methods.common import training_arguments
from align.methods.grpo.config import GRPOAlgorithmConfig
from align.methods.grpo.trainer import AlignGRPOTrainer
from align.models import load_causal_lm, load_tokenizer
from align.rewards import build_reward_sources
from align.train import shutdown_distributed

GROUP = 4


def deterministic_rollout(tokenizer):
    def rollout(prompts, trainer):
        seen: dict[str, int] = {}
        prompt_ids, completion_ids = [], []
        for messages in prompts:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            j = seen[text] = seen.get(text, -1) + 1
            a, b = map(int, messages[-1]["content"].removeprefix("Compute ").rstrip(".").split("+"))
            answer = a + b if j % 2 == 0 else a + b + j
            completion = "x" * (3 * j) + f" Answer: \\boxed{{{answer}}}"
            prompt_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            completion_ids.append(ids + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}
    return rollout


def main(out: str, batch: int, accumulation: int) -> None:
    config = AlignConfig(algorithm=GRPOAlgorithmConfig(num_generations=GROUP),
                         data=DataConfig(synthetic=SyntheticConfig(num_train=64, num_eval=0)))
    config.trainer.per_device_train_batch_size = batch
    config.trainer.gradient_accumulation_steps = accumulation
    config.trainer.max_steps = 3
    config.trainer.learning_rate = 1e-3
    config.trainer.seed = 7
    train, _ = load_splits(config.data, required=("prompt", "answer"))
    tokenizer = load_tokenizer("embedded:tiny")
    rewards, weights = build_reward_sources([RewardSourceConfig(name="boxed_match")])
    args = GRPOConfig(**training_arguments(config, Path(out).parent / "run", [], "invariance"),
                      num_generations=GROUP, loss_type="dapo", beta=0.0, max_completion_length=32,
                      reward_weights=weights)
    model = load_causal_lm("embedded:tiny")
    initial = {k: v.double().sum().item() for k, v in model.state_dict().items()}
    trainer = AlignGRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=train,
                               processing_class=tokenizer, rollout_func=deterministic_rollout(tokenizer))
    trainer.train()
    params = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # collective: gathers ZeRO-3 shards
    if trainer.accelerator.is_main_process:
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        fingerprint = {k: v.double().sum().item() for k, v in params.items()}
        with open(out, "w") as f:
            json.dump({"losses": losses, "weights": fingerprint, "initial_weights": initial}, f)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
