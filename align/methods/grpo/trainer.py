"""GRPO: TRL's GRPOTrainer with align's per-step diagnostics.

The loss is TRL's, unchanged: any `loss_type` of the installed TRL (grpo, dapo, dr_grpo, bnpo, cispo, sapo, luspo,
vespo in TRL 1.16; `grpo_loss_types`), and GSPO through `importance_sampling_level="sequence"`. This subclass only
observes. At every optimizer step it adds

  groups/zero_variance_frac  fraction of groups whose rewards are all equal (their advantages are all zero)
  groups/solved_frac         fraction of groups with at least one successful completion: reward > success_threshold
                             (0 for GRPO; SAGE's algorithm.success_threshold)
  groups/within_group_std    mean within-group reward std
  groups/never_solved_frac   distinct prompts trained on so far with no successful completion yet (checkpointed)
  timing/{generation,reward,ref_logprobs,other,update,step}_s
                             wall time per phase; `ref_logprobs` is every no-grad log-prob forward of the rollout
                             (the reference model, and the old policy when steps_per_generation > 1); `other` is the
                             rest of the rollout (tokenization, padding, advantages); `update` is the loss's forwards,
                             backward and optimizer step
  perf/tokens_per_s          prompt + completion tokens of the micro-batches trained on in this step, summed over
                             processes, per second of step time

next to TRL's own `reward`, `reward_std`, `rewards/<source>/mean`, `kl`, `entropy`, `clip_ratio/*`.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from align.checkpoints import CompleteCheckpoints
from align.methods.grpo.config import GRPOAlgorithmConfig, cycle_steps
from align.rollout import SolvedPrompts, combine_rewards, group_stats, prompt_key
from align.timing import PhaseTimer
from align.tracking import RedactedArguments


class _StepBoundaries(TrainerCallback):
    """Tells the trainer where optimizer steps begin and end (after the optimizer update, before logging)."""

    def __init__(self, trainer: AlignGRPOTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._phases.start_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._record_step_timing()


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's prompt sampler with each epoch's shuffle a function of (seed, epoch) alone.

    TRL draws every epoch's permutation from one generator that advances epoch after epoch, so a resumed run (a fresh
    sampler) would replay the first epoch's order in a later epoch. The Trainer calls `set_epoch` before each epoch,
    also when it resumes; epoch 0 keeps TRL's order.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed((self.seed or 0) + epoch)


class AlignGRPOTrainer(CompleteCheckpoints, GRPOTrainer):
    # Timed phases inside the rollout; a subclass that adds one (SAGE's hint generation) extends this tuple.
    _rollout_phases: tuple[str, ...] = ("generation", "reward", "ref_logprobs")
    # A completion succeeds when its reward is above this (the solved / never-solved diagnostics); SAGE sets its own.
    success_threshold: float = 0.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._phases = PhaseTimer()
        self._in_rollout = False
        self._step_tokens = 0
        self.solved_prompts = SolvedPrompts()
        self.add_callback(_StepBoundaries(self))

    _prompt_sampler = None

    def _get_train_sampler(self, dataset=None):
        self._prompt_sampler = EpochSeededRepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset, mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation, shuffle=self.shuffle_dataset,
            seed=self.args.seed)
        return self._prompt_sampler

    @property
    def checkpoint_step_multiple(self) -> int:
        """Optimizer steps per generation cycle: a preemption stops (and checkpoints) only at a multiple of it, where
        no generated batch is buffered (TRL does not checkpoint its buffer)."""
        return cycle_steps(self.args.steps_per_generation, self.num_iterations, self.args.gradient_accumulation_steps)

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # The Trainer's set_epoch does not reach the sampler through accelerate's shard + skip wrappers (a
        # multi-process run resumed mid-epoch): set it here, before the epoch's iterator is made.
        if isinstance(self._prompt_sampler, EpochSeededRepeatSampler):
            self._prompt_sampler.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    @property
    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    # --- observed phases -------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        self._in_rollout = True
        try:
            with self._phases("rollout"):
                return super()._generate_and_score_completions(inputs)
        finally:
            self._in_rollout = False

    def _generate(self, prompts):
        with self._phases("generation"):
            return super()._generate(prompts)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        # Only the rollout's no-grad forwards (reference, old policy) are their own phase; every forward inside the
        # loss (the policy's, and e.g. f-HAL's reference forward on its pairs) is part of the update.
        if not self._in_rollout or torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        with self._phases("ref_logprobs"):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            # Stays a device tensor: converting here would force a GPU sync on every micro-step.
            self._step_tokens += inputs["prompt_mask"].sum() + inputs["completion_mask"].sum()
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = self._rewards_per_func(inputs, prompts, completions, completion_ids_list)
        # Group statistics describe the raw task reward: TRL's weighted nansum over sources, NaN where every source
        # returned None (also under multi_objective_aggregation=normalize_then_sum, which only changes advantages).
        rewards = combine_rewards(rewards_per_func, self.reward_weights)
        group_size = self.num_generations if self._mode == "train" else self.num_generations_eval
        stats = group_stats(rewards, group_size, self.success_threshold)
        for name, value in stats.metrics().items():
            self._metrics[self._mode][f"groups/{name}"].append(value)
        if self._mode == "train":
            # Groups may straddle processes: key every completion, gather in the rewards' order, take each group's.
            keys = gather_object([prompt_key(p) for p in prompts])  # as is on a single process
            self.solved_prompts.update(keys[::group_size], (stats.successes > 0).tolist())
            self._metrics["train"]["groups/never_solved_frac"].append(self.solved_prompts.never_solved_frac())
        return rewards_per_func

    # --- training state beyond TRL's: saved in every checkpoint, restored on resume (CompleteCheckpoints) ----------

    algorithm_state_file = "prompt_stats.json"

    def algorithm_state(self) -> dict:
        """The prompts seen and solved so far (groups/never_solved_frac); subclasses add their own state."""
        return self.solved_prompts.state_dict()

    def load_algorithm_state(self, state: dict) -> None:
        self.solved_prompts.load_state_dict(state)

    def _rewards_per_func(self, inputs, prompts, completions, completion_ids_list) -> torch.Tensor:
        """Rewards of every process's completions, shape (total, num_sources): TRL's scoring, timed."""
        with self._phases("reward"):
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _record_step_timing(self) -> None:
        seconds = self._phases.finish_step()
        rollout = seconds.pop("rollout", 0.0)
        inner = sum(seconds.get(k, 0.0) for k in self._rollout_phases)
        seconds["other"] = max(rollout - inner, 0.0)
        seconds["update"] = max(seconds["step"] - rollout, 0.0)
        metrics = self._metrics["train"]
        for phase in (*self._rollout_phases, "other", "update", "step"):
            metrics[f"timing/{phase}_s"].append(seconds.get(phase, 0.0))
        local = torch.as_tensor(self._step_tokens, dtype=torch.float32, device=self.accelerator.device)
        tokens = self.accelerator.reduce(local, reduction="sum").item()  # every rank reaches on_step_end
        self._step_tokens = 0
        metrics["perf/tokens_per_s"].append(tokens / seconds["step"] if seconds["step"] > 0 else 0.0)


class AlignGRPOConfig(RedactedArguments, GRPOConfig):
    """TRL's GRPOConfig, logged and pickled without credentials."""


def grpo_config(algo: GRPOAlgorithmConfig, common_args: dict, reward_weights: list[float], *,
                log_completions: bool = False, trust_remote_code: bool = False) -> GRPOConfig:
    """TRL's GRPOConfig from align's algorithm node plus the arguments every trainer shares."""
    return AlignGRPOConfig(
        **common_args, loss_type=algo.loss_type, importance_sampling_level=algo.importance_sampling_level,
        num_generations=algo.num_generations, beta=algo.beta, epsilon=algo.epsilon, epsilon_high=algo.epsilon_high,
        scale_rewards=algo.scale_rewards, temperature=algo.temperature, top_p=algo.top_p,
        max_completion_length=algo.max_completion_length, steps_per_generation=algo.steps_per_generation,
        num_iterations=algo.num_iterations, mask_truncated_completions=algo.mask_truncated_completions,
        use_vllm=algo.use_vllm, vllm_mode=algo.vllm_mode, reward_weights=reward_weights,
        log_completions=log_completions, trust_remote_code=trust_remote_code, **algo.trl,
    )


def build_grpo_trainer(model, tokenizer, train_dataset, rewards: list, weights: list[float],
                       algo: GRPOAlgorithmConfig, common_args: dict, *, log_completions: bool = False,
                       trust_remote_code: bool = False, peft_config=None, trainer_class: type | None = None,
                       **trainer_kwargs) -> AlignGRPOTrainer:
    """`trainer_class` (default AlignGRPOTrainer) built from TRL's GRPOConfig for `algo`; the GRPO-family methods
    pass their subclass and its extra constructor arguments through `trainer_kwargs`."""
    args = grpo_config(algo, common_args, weights, log_completions=log_completions,
                       trust_remote_code=trust_remote_code)
    return (trainer_class or AlignGRPOTrainer)(model=model, reward_funcs=rewards, args=args,
                                               train_dataset=train_dataset, processing_class=tokenizer,
                                               peft_config=peft_config, **trainer_kwargs)
