"""The particle engine: SMC decoding of several prompts at once, N particles each, on `align.generation.generate`.

    settings = Settings(n=8, block=32, max_new_tokens=256, lam=4.0, variant="prefix")
    results = decode(model, tokenizer, prompt_ids, settings, reward, generator=torch.Generator().manual_seed(0))

Every unfinished particle of every prompt advances by one block of B tokens in a single `generate` call (the
particles are rows of one batch, each its prompt plus the tokens it has so far); a `Recorder` logits processor keeps
each drawn token's log p (raw logits, temperature 1) and log q (the proposal, p at temperature tau). `generate` has no
cache to reorder after resampling, so each block re-prefills every row's prompt and prefix: a block costs the prefix
again in forward tokens, not in generated ones. Finished particles are carried, never extended. The weight math is in
`align.decode.smc` (its docstring lists the decisions taken).

`reward(prompt_indices, texts) -> list[float | None]` scores completions (partial ones for the prefix twist) of the
given prompts; None counts as 0. One torch.Generator seeds the sampling (a seed per `generate` call drawn from it),
the resampling and the MH moves: the same generator state gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import LogitsProcessor

from align.decode import smc
from align.generation import Decoding, generate
from align.rewards.verifiers import extract_boxed
from align.timing import PhaseTimer

VARIANTS = ("prefix", "lookahead", "final")
Reward = Callable[[list[int], list[str]], list]


@dataclass(frozen=True)
class Settings:
    """SMC settings (the spec's defaults). variant: the twist: prefix (lam r(partial) at each boundary), lookahead
    (rollouts' V_hat), final (Psi = 1 until the stop token: soft best-of-N) or none (no reward at all: power sampling
    when alpha > 1). kappa: resample when ESS < kappa N (0 never). mh_steps: MH moves per duplicate after a resample
    (prefix variant only). final_moves: MH moves of every particle of the final pool towards pi (any variant).
    rollouts: M per particle and boundary (lookahead)."""

    n: int = 8
    block: int = 32
    max_new_tokens: int = 256
    alpha: float = 1.0
    tau: float = 1.0
    lam: float = 4.0
    kappa: float = 0.5
    resampling: str = "systematic"
    variant: str = "prefix"
    mh_steps: int = 1
    final_moves: int = 0
    rollouts: int = 2
    selection: str = "sample"


@dataclass
class Particle:
    """One partial completion of prompt `prompt`: its tokens with each one's log p and log q, whether it is frozen
    (finished: a stop token; truncated: max_new_tokens reached), its current log Psi and its final reward R."""

    prompt: int
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    finished: bool = False
    truncated: bool = False
    log_psi: float = 0.0
    reward: float | None = None

    @property
    def frozen(self) -> bool:
        return self.finished or self.truncated

    def copy(self) -> Particle:
        return replace(self, tokens=list(self.tokens), logp=list(self.logp), logq=list(self.logq))


@dataclass
class Pool:
    """One prompt's particles, their log-weights (N,), log Z_hat and what it cost: tokens sampled, tokens the LM read
    (`forward_tokens`: each generate call's prefill of prompt + prefix, then one position per further token) and
    reward calls."""

    particles: list[Particle]
    logw: torch.Tensor
    log_z: float = 0.0
    generated_tokens: int = 0
    forward_tokens: int = 0
    reward_calls: int = 0
    resamples: int = 0
    ess: list[float] = field(default_factory=list)
    mh_proposed: int = 0
    mh_accepted: int = 0


class Recorder(LogitsProcessor):
    """Records, for every row of one `generate` call, log p (temperature 1) and log q (temperature `tau`) of each
    drawn token. Custom processors run on the raw logits, before generate's temperature; a step's token is only known
    at the next call (the last column of `input_ids`) or, for the last step, from the output (`finish`)."""

    def __init__(self, tau: float):
        self.tau, self.previous = tau, None
        self.logp: list[torch.Tensor] = []
        self.logq: list[torch.Tensor] = []

    def _take(self, tokens: torch.Tensor) -> None:
        logp, logq = self.previous
        self.logp.append(logp.gather(1, tokens[:, None])[:, 0].cpu())
        self.logq.append(logq.gather(1, tokens[:, None])[:, 0].cpu())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self._take(input_ids[:, -1])
        logits = scores.float()
        self.previous = (torch.log_softmax(logits, -1), torch.log_softmax(logits / self.tau, -1))
        return scores

    def finish(self, completions: list[list[int]]) -> tuple[list[list[float]], list[list[float]]]:
        """Per row, the log p and log q lists of its completion's tokens."""
        steps = len(self.logp) + 1
        last = [ids[steps - 1] if len(ids) == steps else 0 for ids in completions]
        self._take(torch.tensor(last, device=self.previous[0].device))
        logp, logq = torch.stack(self.logp, 1).tolist(), torch.stack(self.logq, 1).tolist()
        return ([row[:len(ids)] for row, ids in zip(logp, completions)],
                [row[:len(ids)] for row, ids in zip(logq, completions)])


def forward_tokens(row: list[int], new: list[int]) -> int:
    """Positions the LM reads to sample `new` after `row` in one generate call: the prefill of `row` (which yields
    the first new token), then one per further token."""
    return len(row) + max(len(new) - 1, 0)


def extend(model, tokenizer, rows: list[list[int]], tokens: int, tau: float, generator: torch.Generator,
           copies: int = 1):
    """Continue each row (prompt + prefix ids) by up to `tokens` tokens from q, `copies` continuations per row, in
    one `generate` call: (completion ids, finished flags, log p lists, log q lists), row-major."""
    recorder = Recorder(tau)
    out = generate(model, tokenizer, rows, Decoding(tokens, temperature=tau, top_p=1.0, top_k=0,
                                                    num_return_sequences=copies),
                   seed=generator, logits_processors=[recorder])
    logp, logq = recorder.finish(out.completion_ids)
    return out.completion_ids, out.finished, logp, logq


class Engine:
    """SMC over several prompts: `run` returns one `Pool` per prompt, its particles frozen or at max_new_tokens.
    Every step batches across prompts: one `generate` call (and one reward call) per block, per lookahead and per MH
    sweep, for all the prompts' particles together. `timer` (a fresh one unless given) adds up the wall time of the
    phases: generate (the blocks), lookahead (its rollouts), move (MH proposals), score (every reward call),
    resample."""

    def __init__(self, model, tokenizer, settings: Settings, reward: Reward | None, generator: torch.Generator,
                 timer: PhaseTimer | None = None):
        self.model, self.tokenizer, self.s, self.reward, self.generator = model, tokenizer, settings, reward, generator
        self.prompt_ids: list[list[int]] = []
        self.timer = timer or PhaseTimer()

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def score(self, items: list[tuple[Pool, Particle]], texts: list[str]) -> list[float]:
        """Rewards (lambda-free, None -> 0) of `texts`, one per (pool, particle) item, counted as its pool's calls."""
        if self.reward is None or not items:
            return [0.0] * len(items)
        for pool, _ in items:
            pool.reward_calls += 1
        with self.timer("score"):
            values = self.reward([p.prompt for _, p in items], texts)
        return [0.0 if r is None else float(r) for r in values]

    def run(self, prompt_ids: list[list[int]]) -> list[Pool]:
        s = self.s
        pools = [Pool([Particle(i) for _ in range(s.n)], torch.zeros(s.n, dtype=torch.float64))
                 for i in range(len(prompt_ids))]
        self.prompt_ids = prompt_ids
        while True:
            live = [(pool, p) for pool in pools for p in pool.particles if not p.frozen]
            if not live:
                for _ in range(s.final_moves):
                    self.final_move([(pool, p) for pool in pools for p in pool.particles])
                return pools
            self.advance(live)
            moves = [(pool, p) for pool in pools if any(not p.frozen for p in pool.particles)
                     for p in self.maybe_resample(pool)]
            for _ in range(s.mh_steps if s.variant == "prefix" else 0):
                self.move(moves)

    def advance(self, live: list[tuple[Pool, Particle]]) -> None:
        """One block for every live particle: extend, weigh (increment + log Psi_new - log Psi_old), freeze."""
        length = len(live[0][1].tokens)  # live particles advance in lockstep
        tokens = min(self.s.block, self.s.max_new_tokens - length)
        rows = [self.prompt_ids[p.prompt] + p.tokens for _, p in live]
        with self.timer("generate"):
            ids, finished, logp, logq = extend(self.model, self.tokenizer, rows, tokens, self.s.tau, self.generator)
        increments = []
        for (pool, p), row, new, done, lp, lq in zip(live, rows, ids, finished, logp, logq):
            p.tokens, p.logp, p.logq = p.tokens + new, p.logp + lp, p.logq + lq
            p.finished = done
            p.truncated = not done and len(p.tokens) >= self.s.max_new_tokens
            pool.generated_tokens += len(new)
            pool.forward_tokens += forward_tokens(row, new)
            increments.append(smc.block_increment(torch.tensor(lp), torch.tensor(lq), self.s.alpha).item())
        for (pool, p), increment, psi in zip(live, increments, self.log_psi(live)):
            i = next(j for j, q in enumerate(pool.particles) if q is p)
            pool.logw[i] += increment + psi - p.log_psi
            p.log_psi = psi

    def log_psi(self, items: list[tuple[Pool, Particle]]) -> list[float]:
        """log Psi of each particle: lambda R at a frozen one (R stored on it), else the variant's twist."""
        s = self.s
        frozen = [(pool, p) for pool, p in items if p.frozen]
        for (_, p), r in zip(frozen, self.score(frozen, [self.text(p.tokens) for _, p in frozen])):
            p.reward = r if self.reward is not None else None
        live = [(pool, p) for pool, p in items if not p.frozen]
        if s.variant == "prefix":
            twist = [s.lam * r for r in self.score(live, [self.text(p.tokens) for _, p in live])]
        elif s.variant == "lookahead":
            twist = self.lookahead(live)
        else:
            twist = [0.0] * len(live)
        by_id = {id(p): t for (_, p), t in zip(live, twist)}
        return [s.lam * (p.reward or 0.0) if p.frozen else by_id[id(p)] for _, p in items]

    def lookahead(self, live: list[tuple[Pool, Particle]]) -> list[float]:
        """log V_hat per particle: LSE over M rollouts to completion of lambda R + sum(alpha log p - log q), - log M."""
        if not live:
            return []
        s, m = self.s, self.s.rollouts
        rows = [self.prompt_ids[p.prompt] + p.tokens for _, p in live]
        with self.timer("lookahead"):
            ids, _, logp, logq = extend(self.model, self.tokenizer, rows, s.max_new_tokens - len(live[0][1].tokens),
                                        s.tau, self.generator, copies=m)
        items = [live[k // m] for k in range(len(ids))]
        for k, ((pool, _), x) in enumerate(zip(items, ids)):
            pool.generated_tokens += len(x)
            pool.forward_tokens += forward_tokens(rows[k // m], x)
        rewards = torch.tensor(self.score(items, [self.text(p.tokens + x) for (_, p), x in zip(items, ids)]),
                               dtype=torch.float64)
        terms = s.lam * rewards + torch.tensor([smc.block_increment(torch.tensor(lp), torch.tensor(lq), s.alpha)
                                                for lp, lq in zip(logp, logq)], dtype=torch.float64)
        return (torch.logsumexp(terms.view(len(live), m), 1) - math.log(m)).tolist()

    def maybe_resample(self, pool: Pool) -> list[Particle]:
        """Resample the pool when its ESS < kappa N (log Z_hat takes the mean weight); returns the unfinished
        duplicates, which MH then moves."""
        value = smc.ess(pool.logw).item()
        pool.ess.append(value)
        if value >= self.s.kappa * self.s.n:
            return []
        with self.timer("resample"):
            ancestors = smc.resample(pool.logw, self.s.resampling, self.generator).tolist()
        pool.log_z += smc.log_mean_weight(pool.logw).item()
        pool.logw = torch.zeros_like(pool.logw)
        pool.resamples += 1
        pool.particles = [pool.particles[a].copy() for a in ancestors]
        return [p for k, (a, p) in enumerate(zip(ancestors, pool.particles)) if a in ancestors[:k] and not p.frozen]

    def move(self, items: list[tuple[Pool, Particle]]) -> None:
        """One MH suffix move per particle, all in one batch: cut c uniform on 1..n, regenerate n - c + 1 tokens
        from q, reject a proposal that stops early, accept with `smc.mh_log_accept`."""
        if not items:
            return
        cuts = [int(torch.randint(len(p.tokens), (), generator=self.generator)) for _, p in items]
        rows = [self.prompt_ids[p.prompt] + p.tokens[:c] for (_, p), c in zip(items, cuts)]
        with self.timer("move"):
            ids, finished, logp, logq = extend(self.model, self.tokenizer, rows, len(items[0][1].tokens) - min(cuts),
                                               self.s.tau, self.generator)
        proposals = []
        for (pool, p), c, row, new, done, lp, lq in zip(items, cuts, rows, ids, finished, logp, logq):
            need = len(p.tokens) - c
            pool.generated_tokens += len(new)
            pool.forward_tokens += forward_tokens(row, new)
            pool.mh_proposed += 1
            if len(new) > need or (len(new) == need and not done):  # no stop token among the needed ones
                proposals.append((pool, p, c, p.tokens[:c] + new[:need], lp[:need], lq[:need]))
        psis = self.score([(pool, p) for pool, p, *_ in proposals], [self.text(x[3]) for x in proposals])
        for proposal, r in zip(proposals, psis):
            self.accept(*proposal, self.s.lam * r)

    def final_move(self, items: list[tuple[Pool, Particle]]) -> None:
        """One MH suffix move per frozen particle, towards pi itself (the final sweep), all in one batch: cut c
        uniform on 1..n, the suffix regenerated from q until a stop token or max_new_tokens (length n'), accepted
        with `smc.mh_log_accept` including log(n / n'); one reward call per proposal."""
        if not items:
            return
        s = self.s
        cuts = [int(torch.randint(len(p.tokens), (), generator=self.generator)) for _, p in items]
        rows = [self.prompt_ids[p.prompt] + p.tokens[:c] for (_, p), c in zip(items, cuts)]
        with self.timer("move"):
            ids, finished, logp, logq = extend(self.model, self.tokenizer, rows, s.max_new_tokens - min(cuts), s.tau,
                                               self.generator)
        proposals = []
        for (pool, p), c, row, new, done, lp, lq in zip(items, cuts, rows, ids, finished, logp, logq):
            pool.generated_tokens += len(new)
            pool.forward_tokens += forward_tokens(row, new)
            pool.mh_proposed += 1
            room = s.max_new_tokens - c  # the batch ran to the shortest cut's room: longer rows stop at their own
            proposals.append((pool, p, c, p.tokens[:c] + new[:room], lp[:room], lq[:room], done and len(new) <= room))
        rewards = self.score([(pool, p) for pool, p, *_ in proposals], [self.text(x[3]) for x in proposals])
        for (pool, p, c, tokens, lp, lq, done), r in zip(proposals, rewards):
            self.accept(pool, p, c, tokens, lp, lq, s.lam * r, length_ratio=len(p.tokens) / len(tokens),
                        finished=done, truncated=not done, reward=r if self.reward is not None else None)

    def accept(self, pool: Pool, p: Particle, cut: int, tokens: list[int], lp: list[float], lq: list[float],
               psi: float, length_ratio: float = 1.0, **frozen) -> None:
        """Accept y' = `tokens` for particle p with probability A (its new log Psi `psi`; `length_ratio` n / n' when
        the move may change the length); on acceptance `frozen` (finished, truncated, reward) is set too."""
        log_a = smc.mh_log_accept(torch.tensor(lp), torch.tensor(lq), torch.tensor(p.logp[cut:]),
                                  torch.tensor(p.logq[cut:]), psi, p.log_psi, self.s.alpha, length_ratio)
        if math.log(float(torch.rand((), generator=self.generator, dtype=torch.float64)) + 1e-300) < log_a:
            p.tokens, p.logp, p.logq, p.log_psi = tokens, p.logp[:cut] + lp, p.logq[:cut] + lq, psi
            for key, value in frozen.items():
                setattr(p, key, value)
            pool.mh_accepted += 1


def answer_key(text: str) -> str:
    """What `vote` groups by: the last boxed answer, else the whole text stripped."""
    boxed = extract_boxed(text)
    return (boxed if boxed is not None else text).strip()


def choose(pool: Pool, tokenizer, rule: str, generator: torch.Generator) -> int:
    """The index of the particle `rule` selects from a final pool."""
    texts = [tokenizer.decode(p.tokens, skip_special_tokens=True) for p in pool.particles]
    return smc.select(rule, pool.logw, [tuple(p.tokens) for p in pool.particles], [answer_key(t) for t in texts],
                      [p.reward for p in pool.particles], generator)
