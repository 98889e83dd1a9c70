"""SAGE and SAGE-LIGHT: GRPO whose collapsed groups are re-rolled with hints the policy writes itself.

Liao et al., "Self-Hinting Language Models Enhance Reinforcement Learning" (arXiv 2602.03143); the method as
implemented is specified in specs/sage.md and explained for users in docs/sage.md.

Under a sparse reward most groups score all 0, their group-normalised advantages vanish and GRPO learns nothing
from them. SAGE asks the *current* policy to write three progressive hints from the question and the privileged
reference solution, re-rolls the collapsed group with the hint in its prompt, and trains on the hinted group. The
reward never sees the hint; evaluation never uses one.

Layout: the pure parts live beside this module: hints.py (hint request, parsing, leak filter, hinted prompt) and
math.py (collapse test, escalation, SAGE-LIGHT level rule, per-prompt state). This module is the trainer, which
overrides only TRL's `_generate` (the rollout) and the reward hook, so TRL's own code pads the batch and computes
the old / reference log-probs and the loss on the prompt ids the rollout returns: the *hinted* ones.

Decisions the spec leaves open:
- A group is collapsed when no completion scores above `success_threshold` (trigger `no_success`). Under trigger
  `zero_variance` a group with identical rewards is collapsed unless every completion succeeded (all-correct groups
  are never hinted).
- A hint is usable only when all three levels parse as non-empty strings. Unparsable or leaking hints are retried
  `hint.retries` times; the first attempt uses `hint.temperature` (greedy by default), retries sample at
  `hint.retry_temperature` because a greedy retry would repeat itself. A leaking hint (any level contains the
  verifier's answer as a whole token, whitespace ignored; a `\\boxed{}` answer is compared by its content) is
  discarded whole.
- Each rank hints and re-rolls the groups it holds, so a process's generation batch must hold whole groups
  (checked by config validation). Every generation round is collective: ranks with nothing to do generate for a
  filler prompt (discarded), so ZeRO-3's gathered weights, synced generation and vLLM server mode see the same
  number of calls with the same number of prompts on every rank.
- A prompt counts as solved once any completion that entered the loss (hinted or not) succeeded: GRPO's
  `groups/never_solved_frac` sees the final, replaced groups.
- SAGE-LIGHT: a prompt with a reference solution whose fresh hint fails and that has no earlier good hint is rolled
  out without a hint that step (logged as level 0); its level still updates from the group's success rate.
- Rewards are scored once per completion: the rollout keeps the rewards it computed for the final groups and hands
  them to TRL's advantage computation instead of letting TRL score the batch again.
- TRL's `completions/*` length metrics describe the probe rollout (SAGE) or the hinted rollout (SAGE-LIGHT); the
  `sage/*` metrics describe the groups that entered the loss.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate.utils import gather_object
from transformers import GenerationConfig
from transformers.utils import logging
from trl.chat_template_utils import parse_response
from trl.data_utils import is_conversational

from align.generation import chat_prompt_ids, fill_to, sampling_kwargs
from align.methods.grpo.trainer import AlignGRPOTrainer, build_grpo_trainer
from align.methods.sage.config import SAGEAlgorithmConfig
from align.methods.sage.hints import hint_request, leaks_answer, parse_hints, question_text, with_hint
from align.methods.sage.math import LEVELS, HintState, collapsed, escalate, next_light_level
from align.models import position_shift_invariant
from align.rollout import GroupStats, combine_rewards, group_stats, prompt_key
from align.tokens import split_by_length

logger = logging.get_logger(__name__)

STATE_FILE = "sage_state.json"


@dataclass
class _Rollout:
    """A process's rollout, G consecutive sequences per group; groups are replaced whole, never mixed."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list
    logprobs: list | None
    rewards: torch.Tensor  # (n, num_reward_sources), unweighted

    def group(self, g: int, size: int) -> slice:
        return slice(g * size, (g + 1) * size)

    def replace(self, g: int, other: _Rollout, h: int, size: int) -> None:
        """Group g becomes group h of `other` (prompt ids, completions, sampling log-probs, rewards)."""
        mine, theirs = self.group(g, size), self.group(h, size)
        self.prompt_ids[mine] = other.prompt_ids[theirs]
        self.completion_ids[mine] = other.completion_ids[theirs]
        self.completions[mine] = other.completions[theirs]
        if self.logprobs is not None:
            self.logprobs[mine] = other.logprobs[theirs]
        self.rewards[mine] = other.rewards[theirs]


class AlignSAGETrainer(AlignGRPOTrainer):
    """AlignGRPOTrainer whose training rollout applies the SAGE or SAGE-LIGHT schedule.

    Adds every step: sage/collapsed_frac_before (SAGE) and sage/collapsed_frac_after, sage/hints_requested,
    sage/hints_parsed, sage/hints_failed (unparsable attempts), sage/hints_leaked, sage/hints_reused (SAGE-LIGHT),
    sage/level_{0,1,2,3}_frac (level each group was trained at), sage/reward_before (SAGE, the unhinted probe) and
    sage/reward_after, timing/hint_writing_s (the policy writing hints) and timing/hinted_rollout_s (SAGE's re-rolls
    with a hint; SAGE-LIGHT's one rollout counts as generation); GRPO's groups/never_solved_frac counts the final
    groups.
    Writes every usable hint to `<output_dir>/hints-rank<r>.jsonl`.
    """

    _rollout_phases = (*AlignGRPOTrainer._rollout_phases, "hint_writing", "hinted_rollout")

    def __init__(self, *args, sage: SAGEAlgorithmConfig, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tools or self.rollout_func is not None or self.environment_factories is not None or self._is_vlm:
            raise ValueError("SAGE rewrites the rollout itself; it cannot be combined with tools, environments, "
                             "a rollout_func or a vision-language model.")
        local_batch = self.args.generation_batch_size // self.accelerator.num_processes
        if local_batch % self.num_generations:
            raise ValueError(f"SAGE re-rolls whole groups on the process that holds them: each process's generation "
                             f"batch ({local_batch}) must be a multiple of num_generations ({self.num_generations}).")
        self.sage = sage
        self.success_threshold = sage.success_threshold
        self.hint_state = HintState()
        self._rows: list[dict] | None = None  # the dataset rows of the rollout in progress
        self._final_rewards: torch.Tensor | None = None
        self._warned_reward_logs = False
        self._shift_invariant = position_shift_invariant(self.model.config)  # may the loss split by length?
        self._split_by_length = False  # set by compute_loss for its own forward

    # --- TRL hooks -------------------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        self._rows = inputs
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rows, self._final_rewards = None, None

    def _generate(self, prompts):
        if not self.model.training or self._rows is None:  # evaluation never uses hints
            return super()._generate(prompts)
        if self.sage.schedule == "sage_light":
            return self._light_rollout(prompts)
        return self._sage_rollout(prompts)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Where the rollout computed no old log-probs, the ratio's denominator is this forward's own (detached), so
        # splitting it by length (below) cannot change the ratio; else keep TRL's one forward, whose padding the
        # rollout's log-probs share.
        self._split_by_length = self._shift_invariant and inputs.get("old_per_token_logps") is None
        try:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        finally:
            self._split_by_length = False

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **inputs):
        """TRL's log-probs and entropies; in the loss, forwarded in two buckets of rows by prompt length.

        A hinted prompt is several times longer than an unhinted one and TRL pads every row of a batch to the longest,
        so one hinted group would widen every row of the loss. Each bucket is cut to its own width: the log-probs are
        the same up to float rounding (padding is masked; the rotary positions of a bucket shift by one constant,
        which attention does not see: checked on the model's config). Only the loss's forward is split (the
        rollout's no-grad forwards keep TRL's padding), and only where it saves a fifth of the padded area on every
        rank: ZeRO-3 gathers the weights per forward, so all ranks must make the same number of forwards.
        """
        whole = super()._get_per_token_logps_and_entropies
        arguments = dict(batch_size=batch_size, compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss,
                         **inputs)
        plain = compute_aux_loss or batch_size is not None or any(v is not None for v in inputs.values())
        if plain or not (self._split_by_length and torch.is_grad_enabled()) or len(input_ids) < 2:
            return whole(model, input_ids, attention_mask, logits_to_keep, **arguments)
        buckets = split_by_length(attention_mask)
        split_area = sum(len(rows) * (attention_mask.shape[1] - start) for rows, start in buckets)
        if self._min_over_ranks(int(split_area <= 0.8 * attention_mask.numel())) == 0:
            return whole(model, input_ids, attention_mask, logits_to_keep, **arguments)
        parts = [whole(model, input_ids[rows, start:], attention_mask[rows, start:], logits_to_keep,
                       compute_entropy=compute_entropy) for rows, start in buckets]
        inverse = torch.argsort(torch.cat([rows for rows, _ in buckets]))
        logps = torch.cat([p[0] for p in parts])[inverse]
        entropies = torch.cat([p[1] for p in parts])[inverse] if compute_entropy else None
        return logps, entropies, None

    def _rewards_per_func(self, inputs, prompts, completions, completion_ids_list) -> torch.Tensor:
        if self._final_rewards is None:
            return super()._rewards_per_func(inputs, prompts, completions, completion_ids_list)
        local, self._final_rewards = self._final_rewards, None
        return self.accelerator.gather(local)  # scored during the rollout, on the unhinted prompts

    algorithm_state_file = STATE_FILE

    def algorithm_state(self) -> dict:
        """SAGE-LIGHT's levels and last hints, and GRPO's prompt statistics under `prompt_stats`."""
        return {**self.hint_state.state_dict(), "prompt_stats": super().algorithm_state()}

    def load_algorithm_state(self, state: dict) -> None:
        self.hint_state.load_state_dict(state)
        super().load_algorithm_state(state["prompt_stats"])

    # --- schedules -------------------------------------------------------------------------------------------------

    def _sage_rollout(self, prompts):
        """Probe unhinted; escalate collapsed groups with a reference solution through hint levels 1..3."""
        G, cfg = self.num_generations, self.sage
        prompt_ids, completion_ids, _, completions, logprobs, extra, images, tool_images = super()._generate(prompts)
        rollout = _Rollout(list(prompt_ids), list(completion_ids), list(completions),
                           None if logprobs is None else list(logprobs),
                           self._score(self._rows, prompts, completions, completion_ids))
        probe = self._group_stats(rollout)
        collapsed_before = collapsed(probe, G, cfg.trigger)
        counts = _new_counts()
        candidates = [g for g in collapsed_before.nonzero().flatten().tolist() if self._solution(g)]
        hints = self._write_hints(candidates, prompts, counts)

        def roll(groups: list[int], level: int) -> list[bool]:
            hinted = [with_hint(prompts[g * G], hints[g][level - 1], cfg.hint.solve_template) for g in groups]
            new = self._hinted_groups(hinted, [g * G for g in groups], prompts)
            for h, g in enumerate(groups):
                rollout.replace(g, new, h, G)
            return (self._group_stats(new).successes > 0).tolist()

        levels = escalate(list(hints), roll, self._any_rank)
        after = self._finish(rollout)
        counts.update(collapsed_before=collapsed_before.sum().item(), reward_before=torch.nansum(probe.mean).item())
        self._log_step(counts, after, levels)
        self._write_hint_log(prompts, hints, levels)
        return (rollout.prompt_ids, rollout.completion_ids, None, rollout.completions, rollout.logprobs, extra,
                images, tool_images)

    def _light_rollout(self, prompts):
        """One group per prompt at its carried level with a fresh hint; update the level from the success rate."""
        G, cfg, state = self.num_generations, self.sage, self.hint_state
        keys = [prompt_key(prompts[g * G]) for g in range(len(prompts) // G)]
        wanted = [g for g, key in enumerate(keys) if state.levels.get(key, 0) > 0 and self._solution(g)]
        counts = _new_counts()
        fresh = self._write_hints(wanted, prompts, counts)
        hinted_prompts, levels, used = list(prompts), {}, {}
        for g in wanted:
            hint = fresh.get(g) or state.last_hints.get(keys[g])  # a failed parse reuses the last good hint
            if hint is None:
                continue
            counts["hints_reused"] += g not in fresh
            used[g], levels[g] = hint, state.levels[keys[g]]
            hinted_prompts[g * G:(g + 1) * G] = [with_hint(prompts[g * G], hint[levels[g] - 1],
                                                           cfg.hint.solve_template)] * G
        prompt_ids, completion_ids, _, completions, logprobs, extra, images, tool_images = (
            super()._generate(hinted_prompts))
        rollout = _Rollout(prompt_ids, completion_ids, completions, logprobs,
                           self._score(self._rows, prompts, completions, completion_ids))
        after = self._finish(rollout, light_keys=keys, new_hints=fresh)
        self._log_step(counts, after, levels)
        self._write_hint_log(prompts, used, levels)
        return prompt_ids, completion_ids, None, completions, logprobs, extra, images, tool_images

    def _group_stats(self, rollout: _Rollout) -> GroupStats:
        rewards = combine_rewards(rollout.rewards, self.reward_weights)
        return group_stats(rewards, self.num_generations, self.success_threshold)

    def _finish(self, rollout: _Rollout, light_keys: list[str] | None = None,
                new_hints: dict[int, list[str]] | None = None) -> GroupStats:
        """Keep the final rewards for TRL's advantages; SAGE-LIGHT: update the level map on every rank."""
        G, cfg = self.num_generations, self.sage
        self._final_rewards = rollout.rewards
        after = self._group_stats(rollout)
        if light_keys is None:
            return after
        updates = []
        for g, key in enumerate(light_keys):
            level = next_light_level(self.hint_state.levels.get(key, 0), after.successes[g].item() / G,
                                     cfg.light_rule, cfg.light_alpha, cfg.light_low)
            updates.append((key, level, (new_hints or {}).get(g)))
        for rank_updates in gather_object([updates]):  # one list per process, in rank order
            for key, level, hint in rank_updates:
                self.hint_state.update(key, level, hint)
        return after

    def _log_step(self, counts: dict, after: GroupStats, levels: dict[int, int]) -> None:
        """Sum this step's counts over ranks and log the `sage/*` metrics."""
        G = self.num_generations
        final_levels = torch.tensor([levels.get(g, 0) for g in range(len(after.successes))])
        counts.update(groups=len(after.successes), collapsed_after=collapsed(after, G, self.sage.trigger).sum().item(),
                      reward_after=torch.nansum(after.mean).item(),
                      **{f"level_{lv}": (final_levels == lv).sum().item() for lv in (0, *LEVELS)})
        names = sorted(counts)
        local = torch.tensor([float(counts[n]) for n in names], device=self.accelerator.device)
        total = dict(zip(names, self.accelerator.reduce(local, reduction="sum").tolist(), strict=True))
        groups, metrics = max(total["groups"], 1.0), self._metrics["train"]
        for name in ("hints_requested", "hints_parsed", "hints_failed", "hints_leaked"):
            metrics[f"sage/{name}"].append(total[name])
        if self.sage.schedule == "sage_light":
            metrics["sage/hints_reused"].append(total["hints_reused"])
        else:
            metrics["sage/collapsed_frac_before"].append(total["collapsed_before"] / groups)
            metrics["sage/reward_before"].append(total["reward_before"] / groups)
        metrics["sage/collapsed_frac_after"].append(total["collapsed_after"] / groups)
        metrics["sage/reward_after"].append(total["reward_after"] / groups)
        for lv in (0, *LEVELS):
            metrics[f"sage/level_{lv}_frac"].append(total[f"level_{lv}"] / groups)

    # --- hints and collective generation ----------------------------------------------------------------------------

    def _solution(self, g: int) -> str | None:
        return self._rows[g * self.num_generations].get(self.sage.hint.solution_column) or None

    def _write_hints(self, groups: list[int], prompts, counts: dict) -> dict[int, list[str]]:
        """Ask the policy for hints for `groups`; returns the usable ones. Collective: every rank must call it."""
        G, cfg = self.num_generations, self.sage.hint
        requests = {g: hint_request(prompts[g * G], self._solution(g), cfg) for g in groups}
        counts["hints_requested"] += len(groups)
        hints, pending = {}, list(groups)
        for attempt in range(1 + cfg.retries):
            if not self._any_rank(bool(pending)):
                break
            temperature = cfg.temperature if attempt == 0 else cfg.retry_temperature
            with self._decoding(temperature, cfg.max_tokens):
                _, completion_ids, _ = self._padded_generate([requests[g] for g in pending], 1, "hint_writing")
            texts = self._decode(None, [], completion_ids[:len(pending)])
            retry = []
            for g, text in zip(pending, texts, strict=True):
                levels = parse_hints(text)
                if levels is None:
                    counts["hints_failed"] += 1
                    retry.append(g)
                elif cfg.leak_filter and leaks_answer(levels, self._rows[g * G].get(cfg.answer_column)):
                    counts["hints_leaked"] += 1
                    retry.append(g)
                else:
                    hints[g] = levels
            pending = retry
        counts["hints_parsed"] += len(hints)
        return hints

    def _hinted_groups(self, hinted: list, starts: list[int], prompts) -> _Rollout:
        """Roll out a group of G for each hinted prompt and score it against its original, unhinted prompt.

        `starts[i]` is the batch index where hinted prompt i's group begins (its dataset row and original prompt).
        """
        G = self.num_generations
        messages = [p for p in hinted for _ in range(G)]
        prompt_ids, completion_ids, logprobs = self._padded_generate(messages, G, "hinted_rollout")
        # Filler rows (other ranks had more groups) are scored against row 0 too, so every rank's reward call has
        # the same size, and then dropped.
        index = [s + j for s in starts for j in range(G)]
        index += [0] * (len(completion_ids) - len(index))
        originals = [prompts[i] for i in index]
        completions = self._decode(originals, prompt_ids, completion_ids)
        rewards = self._score([self._rows[i] for i in index], originals, completions, completion_ids)
        n = len(messages)
        return _Rollout(prompt_ids[:n], completion_ids[:n], completions[:n],
                        None if logprobs is None else logprobs[:n], rewards[:n])

    def _padded_generate(self, messages: list, num_generations: int, phase: str) -> tuple[list, list, list | None]:
        """Tokenize and generate for `messages`, padded with filler prompts to the same count on every rank; the
        generation is timed as `phase`.

        Returns (prompt_ids, completion_ids, sampling logprobs) for the padded list: the caller's messages first.
        The filler is repeated in whole groups of `num_generations`, so vLLM server mode's per-group dedup holds.
        """
        width = self._max_over_ranks(len(messages))
        if width == 0:
            return [], [], None
        filler = messages[0] if messages else self._rows[0]["prompt"]
        # TRL's own rendering for text-only prompts without tools (SAGE refuses tools, environments and VLMs).
        prompt_ids = chat_prompt_ids(self.processing_class, fill_to(messages, width, filler),
                                     **self.chat_template_kwargs)
        with self._phases(phase):
            completion_ids, logprobs = self._generate_single_turn(prompt_ids, None, {}, num_generations)
        return list(prompt_ids), list(completion_ids), None if logprobs is None else list(logprobs)

    def _any_rank(self, flag: bool) -> bool:
        return self._max_over_ranks(int(flag)) > 0

    def _max_over_ranks(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        local = torch.tensor(value, device=self.accelerator.device)
        return int(self.accelerator.reduce(local, reduction="max").item())

    def _min_over_ranks(self, value: int) -> int:
        return -self._max_over_ranks(-value)

    @contextmanager
    def _decoding(self, temperature: float, max_tokens: int):
        """Temporarily decode with `temperature` (0 = greedy) and `max_tokens`, on whichever backend generates."""
        if self.use_vllm:
            backend = self.vllm_generation
            saved = backend.temperature, backend.max_completion_length
            backend.temperature, backend.max_completion_length = temperature, max_tokens
            try:
                yield
            finally:
                backend.temperature, backend.max_completion_length = saved
            return
        saved = self.generation_config, self.generation_kwargs
        # Sampling keeps the trainer's top_p / top_k; greedy unsets them.
        kwargs = {**self.generation_kwargs, "max_new_tokens": max_tokens, **sampling_kwargs(temperature)}
        self.generation_kwargs = kwargs
        self.generation_config = GenerationConfig(**kwargs, disable_compile=True)
        try:
            yield
        finally:
            self.generation_config, self.generation_kwargs = saved

    def _decode(self, prompts, prompt_ids, completion_ids) -> list:
        """Completions as TRL's `_generate` decodes them, so reward sources see hinted and unhinted groups alike.

        Text for plain prompts (or `prompts=None`), assistant messages for conversational ones.
        """
        if not completion_ids:
            return []  # batch_decode([]) would return [""]
        if not (prompts and is_conversational({"prompt": prompts[0]})):
            return self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        if (getattr(self._tokenizer, "response_template", None) is not None
                or getattr(self._tokenizer, "response_schema", None) is not None):
            return [[parse_response(self._tokenizer, ids, prefix=prefix, tools=self.tools)]
                    for prefix, ids in zip(prompt_ids, completion_ids, strict=True)]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        return [[{"role": "assistant", "content": t}] for t in texts]

    def _score(self, rows, prompts, completions, completion_ids) -> torch.Tensor:
        """This rank's rewards (n, num_sources) for `completions`, by TRL's scoring against the original prompts.

        Collective (TRL gathers the scores): every rank calls it with the same n.
        """
        n = len(completions)
        # super(): TRL's scoring itself, not this class's override that hands back the rollout's stored rewards.
        gathered = super()._rewards_per_func(rows, prompts, completions, completion_ids)
        # Values a reward source logs with log_extra / log_metric belong to rows that may be replaced (or are
        # fillers); they cannot be matched to the final batch, so they are dropped rather than mislabelled.
        if (self._pending_extra_logs or self._pending_metrics) and not self._warned_reward_logs:
            logger.warning("SAGE: values logged by reward sources through log_extra/log_metric are dropped (the "
                           "rows they describe may be replaced by hinted groups).")
            self._warned_reward_logs = True
        self._pending_extra_logs.clear()
        self._pending_metrics.clear()
        rank = self.accelerator.process_index
        return gathered[rank * n:(rank + 1) * n].clone()

    def _write_hint_log(self, prompts, hints: dict[int, list[str]], levels: dict[int, int]) -> None:
        """Append the hints this rank used to `<output_dir>/hints-rank<r>.jsonl` (for inspection; not state)."""
        if not hints:
            return
        G = self.num_generations
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, f"hints-rank{self.accelerator.process_index}.jsonl")
        with open(path, "a") as f:
            for g, hint in hints.items():
                f.write(json.dumps({"step": self.state.global_step, "question": question_text(prompts[g * G]),
                                    "hint": hint, "level": levels.get(g, 0)}) + "\n")


def _new_counts() -> dict[str, float]:
    return dict.fromkeys(("hints_requested", "hints_parsed", "hints_failed", "hints_leaked", "hints_reused"), 0)


def build_sage_trainer(model, tokenizer, train_dataset, rewards: list, weights: list[float],
                       algo: SAGEAlgorithmConfig, common_args: dict, **options) -> AlignSAGETrainer:
    return build_grpo_trainer(model, tokenizer, train_dataset, rewards, weights, algo, common_args,
                              trainer_class=AlignSAGETrainer, sage=algo, **options)
