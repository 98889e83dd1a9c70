"""Reward-model data: preference pairs with soft labels, observational feedback, and a known-truth synthetic world.

`load_reward_data(cfg, objective)` returns `(train, held_out or None, info)`, lists of canonical rows:

  pairs (bradley_terry, gaussian_anchor), from `prepare_pairs`:
    prompt          chat messages (a string prompt becomes `[system?, user]`, see `to_messages`)
    chosen/rejected plain strings (a response given as a chat contributes its last message's content)
    soft_label      float in (0.5, 1]: the share of votes for `chosen` (ties count half), or 1.0 without labels.
                    Pairs are oriented so that `chosen` is the majority's pick (s < 0.5 swaps the pair and s -> 1 - s);
                    ties (s == 0.5) carry no preference and are dropped (counted in `info["dropped_ties"]`).
    score_chosen/score_rejected    finite floats, only with `score_columns` (external scores: anchors at percentiles)
    anchor_chosen/anchor_rejected  ints >= 0, only with `anchor_columns` (ordinal anchors given directly)
    margin          finite float, only with `margin_column`: how far `chosen` should score above `rejected` in the
                    Bradley-Terry loss (e.g. a rating difference); it follows the pair's orientation (negated when a
                    pair is swapped), so it is always chosen-over-rejected
  feedback (causal_rm), one row per shown response, from `prepare_feedback`:
    prompt, response, observed (0/1: did the user give feedback), label (the noisy 0/1 feedback where observed, 0 as
    a placeholder where not), propensity (float in (0, 1], only with `propensity_column`), true_label (0/1, held-out
    rows only, with `true_label_column`: clean labels are for evaluation and never reach training).

The synthetic source is a known-truth world: a response is a short sentence of words from `VOCABULARY`, each with
a (quality, divisiveness); its true reward is N(mu, sigma^2) with mu = the sum of the qualities and sigma = 0.3 +
the sum of the divisivenesses (`response_truth`). Simulated annotators vote on pairs (`synthetic_preferences`), or
users give selection-biased, noisy feedback (`synthetic_feedback`), so estimated mu, sigma, rho and propensities
can be checked against the truth. Synthetic pair rows also carry mu_chosen, sigma_chosen, mu_rejected and
sigma_rejected; synthetic held-out feedback rows carry mu and sigma.

Every problem with the data is raised as `DataError` naming the split, row, column and the config key that fixes it
(reward-data keys live under `algorithm.data.`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any

import numpy as np

from align.config import FEEDBACK_SELECTIONS, DataConfig, RewardDataConfig
from align.data.loading import DataError, _is_empty, _is_messages, _load_source, to_messages

KEY = "algorithm.data"

# --------------------------------------------------------------------------------------------------------------------
# The synthetic world

# word -> (quality, divisiveness). A 5 x 3 grid: every quality level comes with every divisiveness level, so over
# random responses mu and sigma are uncorrelated and sigma can be learned separately from mu.
VOCABULARY: dict[str, tuple[float, float]] = {
    "reliable": (1.0, 0.0), "brilliant": (1.0, 0.3), "bold": (1.0, 0.6),
    "solid": (0.5, 0.0), "charming": (0.5, 0.3), "quirky": (0.5, 0.6),
    "plain": (0.0, 0.0), "unusual": (0.0, 0.3), "spicy": (0.0, 0.6),
    "slow": (-0.5, 0.0), "loud": (-0.5, 0.3), "weird": (-0.5, 0.6),
    "broken": (-1.0, 0.0), "ugly": (-1.0, 0.3), "offensive": (-1.0, 0.6),
}
WORDS = tuple(VOCABULARY)
BASE_SIGMA = 0.3
WORDS_PER_RESPONSE = 3  # distinct words: mu in [-3, 3], sigma in [0.3, 2.1]; sentences stay under 45 characters
PROMPTS = (
    "Write a one-line product review.",
    "Describe the new phone in one sentence.",
    "Review the restaurant in one line.",
    "Give a one-line opinion of the movie.",
    "Sum up the hotel in one sentence.",
)
# Each generator draws from its own stream of the seed, so train feedback and held-out feedback with the same seed
# are independent draws rather than the same responses.
_PAIRS_STREAM, _FEEDBACK_STREAM, _EVAL_STREAM = 1, 2, 3


def response_truth(text: str) -> tuple[float, float]:
    """The true reward distribution N(mu, sigma^2) of a response: mu = sum of its words' qualities, sigma = 0.3 +
    sum of their divisivenesses. Words outside `VOCABULARY` count nothing; a repeated word counts each time."""
    words = [w for w in re.findall(r"[a-z]+", text.lower()) if w in VOCABULARY]
    # Rounded so that equal word multisets give equal floats whatever the order of the summation noise.
    return (float(round(sum(VOCABULARY[w][0] for w in words), 9)),
            float(round(BASE_SIGMA + sum(VOCABULARY[w][1] for w in words), 9)))


def _sentence(words: list[str]) -> str:
    return f"It is {', '.join(words[:-1])} and {words[-1]}."


def random_responses(rng: np.random.Generator, num: int) -> list[str]:
    """`num` sentences of `WORDS_PER_RESPONSE` distinct vocabulary words in random order, e.g. 'It is bold, slow
    and plain.'"""
    picks = np.argsort(rng.random((num, len(WORDS))), axis=1)[:, :WORDS_PER_RESPONSE]
    return [_sentence([WORDS[i] for i in row]) for row in picks]


def tilted_responses(rng: np.random.Generator, num: int, tilt: float) -> list[str]:
    """`num` sentences like `random_responses`, but each word drawn with probability proportional to
    exp(tilt * quality) among the words not yet drawn, the words kept in the order drawn.

    tilt > 0 favours good words (higher true mu), tilt < 0 bad ones; tilt = 0 is uniform, the same distribution
    as `random_responses`. Deterministic given the state of `rng`; draws `num * len(WORDS)` uniforms from it.
    """
    quality = np.array([VOCABULARY[w][0] for w in WORDS])
    # Gumbel-top-k: the k largest of log-weight + Gumbel noise are k successive draws without replacement,
    # in draw order, for a whole batch at once.
    keys = tilt * quality - np.log(-np.log(rng.random((num, len(WORDS)))))
    picks = np.argsort(-keys, axis=1, kind="stable")[:, :WORDS_PER_RESPONSE]
    return [_sentence([WORDS[i] for i in row]) for row in picks]


def _truths(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = zip(*map(response_truth, texts)) if texts else ((), ())
    return np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)


def _prompts(rng: np.random.Generator, num: int) -> list[str]:
    return [PROMPTS[i] for i in rng.integers(len(PROMPTS), size=num)]


def _check_count(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")


def synthetic_preferences(num_rows: int, seed: int = 0, annotators: int = 5) -> list[dict]:
    """`num_rows` pairs of two different random responses, each judged by `annotators` simulated annotators.

    Annotator j draws u_a ~ N(mu_a, sigma_a^2) and u_b ~ N(mu_b, sigma_b^2) and votes for the larger, so the
    expected vote share of a is Phi((mu_a - mu_b) / sqrt(sigma_a^2 + sigma_b^2)). `chosen` is the response with more
    votes (a tie, possible with an even count, is broken at random; it then carries no preference).
    Columns: prompt (str), chosen, rejected, votes_chosen, votes_rejected (ints), score_chosen, score_rejected (one
    more independent utility draw of each response: an external judge's score, for anchors), mu_chosen,
    sigma_chosen, mu_rejected, sigma_rejected (the truth). Deterministic given `seed`. Raises ValueError (message
    starting with the parameter's name) for num_rows < 0 or annotators < 1.
    """
    _check_count("num_rows", num_rows, 0)
    _check_count("annotators", annotators, 1)
    rng = np.random.default_rng([seed, _PAIRS_STREAM])
    prompts, first, second = _prompts(rng, num_rows), random_responses(rng, num_rows), random_responses(rng, num_rows)
    same = [i for i in range(num_rows) if first[i] == second[i]]
    while same:  # a pair of one response with itself has nothing to compare
        for i, text in zip(same, random_responses(rng, len(same))):
            second[i] = text
        same = [i for i in same if first[i] == second[i]]
    mu_a, sigma_a = _truths(first)
    mu_b, sigma_b = _truths(second)
    u_a = rng.normal(mu_a[:, None], sigma_a[:, None], size=(num_rows, annotators))
    u_b = rng.normal(mu_b[:, None], sigma_b[:, None], size=(num_rows, annotators))
    votes_a = (u_a > u_b).sum(axis=1)
    votes_b = annotators - votes_a
    a_wins = (votes_a > votes_b) | ((votes_a == votes_b) & (rng.random(num_rows) < 0.5))
    score_a, score_b = rng.normal(mu_a, sigma_a), rng.normal(mu_b, sigma_b)
    rows = []
    for i in range(num_rows):
        a = {"text": first[i], "votes": votes_a[i], "score": score_a[i], "mu": mu_a[i], "sigma": sigma_a[i]}
        b = {"text": second[i], "votes": votes_b[i], "score": score_b[i], "mu": mu_b[i], "sigma": sigma_b[i]}
        chosen, rejected = (a, b) if a_wins[i] else (b, a)
        rows.append({"prompt": prompts[i], "chosen": chosen["text"], "rejected": rejected["text"],
                     "votes_chosen": int(chosen["votes"]), "votes_rejected": int(rejected["votes"]),
                     "score_chosen": float(chosen["score"]), "score_rejected": float(rejected["score"]),
                     "mu_chosen": float(chosen["mu"]), "sigma_chosen": float(chosen["sigma"]),
                     "mu_rejected": float(rejected["mu"]), "sigma_rejected": float(rejected["sigma"])})
    return rows


def feedback_propensity(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, propensity: tuple[float, float],
                        selection: str) -> np.ndarray:
    """(N,) P(feedback) per row of the synthetic feedback world.

    "label": propensity[y]; whether a user responds depends on their realised label y, which is random given the
    text, so no model of the text can recover it (a negative control for estimated propensities).
    "text": propensity[0] + (propensity[1] - propensity[0]) * Phi(mu / sigma), the label world's propensity averaged
    over y given the response (P(y = 1 | text) = Phi(mu / sigma)): users respond to how good the response looks,
    a function of its words only, so feedback is missing at random given the text, as CausalRM assumes.
    y (N,) 0/1; mu, sigma (N,) the responses' truth (`response_truth`).
    """
    low, high = propensity
    if selection == "label":
        return np.where(y == 1, high, low).astype(float)
    p_good = np.array([0.5 * math.erfc(-m / (s * math.sqrt(2))) for m, s in zip(mu, sigma)])
    return low + (high - low) * p_good


def synthetic_feedback(num_rows: int, seed: int = 0, rho_01: float = 0.2, rho_10: float = 0.1,
                       propensity: tuple[float, float] = (0.15, 0.6), selection: str = "text") -> list[dict]:
    """Observational feedback: one row per shown response, with selection bias and label noise.

    True label y = 1[u > 0], u ~ N(mu, sigma^2). The user responds with probability `feedback_propensity` (by
    default a function of the response text, so the labelled rows are not the inference distribution but are
    missing at random given the text; `selection="label"` makes it depend on y), and the label they give is y
    flipped with probability rho_01 if y = 1, rho_10 if y = 0.
    Columns: prompt, response, observed (0/1), label (the noisy label when observed, None when not), true_label,
    true_propensity (the row's P(feedback)), mu, sigma. Deterministic given `seed`; both selections draw the same
    responses, labels and flips. Raises ValueError (message starting with the parameter's name) for num_rows < 0,
    rho outside [0, 1], propensities outside (0, 1] or an unknown selection.
    """
    _check_count("num_rows", num_rows, 0)
    for name, rho in (("rho_01", rho_01), ("rho_10", rho_10)):
        if not 0 <= rho <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {rho}.")
    if len(propensity) != 2 or not all(0 < p <= 1 for p in propensity):
        raise ValueError(f"propensity must be [P(feedback | y = 0), P(feedback | y = 1)], both in (0, 1]; got "
                         f"{list(propensity)}.")
    if selection not in FEEDBACK_SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(FEEDBACK_SELECTIONS)}; got {selection!r}.")
    rng = np.random.default_rng([seed, _FEEDBACK_STREAM])
    prompts, responses = _prompts(rng, num_rows), random_responses(rng, num_rows)
    mu, sigma = _truths(responses)
    y = (rng.normal(mu, sigma) > 0).astype(int)
    p = feedback_propensity(y, mu, sigma, tuple(propensity), selection)
    observed = rng.random(num_rows) < p
    flipped = rng.random(num_rows) < np.where(y == 1, rho_01, rho_10)
    noisy = np.where(flipped, 1 - y, y)
    return [{"prompt": prompts[i], "response": responses[i], "observed": int(observed[i]),
             "label": int(noisy[i]) if observed[i] else None, "true_label": int(y[i]),
             "true_propensity": float(p[i]), "mu": float(mu[i]), "sigma": float(sigma[i])}
            for i in range(num_rows)]


def unbiased_feedback_eval(num_rows: int, seed: int = 0) -> list[dict]:
    """Held-out feedback rows without selection or noise: every row observed (true_propensity 1.0) with its clean
    label, for accuracy / AUC. Same columns as `synthetic_feedback`; label = true_label. Independent of the
    `synthetic_feedback` rows of the same seed."""
    _check_count("num_rows", num_rows, 0)
    rng = np.random.default_rng([seed, _EVAL_STREAM])
    prompts, responses = _prompts(rng, num_rows), random_responses(rng, num_rows)
    mu, sigma = _truths(responses)
    y = (rng.normal(mu, sigma) > 0).astype(int)
    return [{"prompt": prompts[i], "response": responses[i], "observed": 1, "label": int(y[i]),
             "true_label": int(y[i]), "true_propensity": 1.0, "mu": float(mu[i]), "sigma": float(sigma[i])}
            for i in range(num_rows)]


# --------------------------------------------------------------------------------------------------------------------
# Soft labels and orientation


def soft_label_from_votes(chosen: float, rejected: float, ties: float = 0) -> float:
    """Share of votes for `chosen`, ties counting half: (chosen + ties / 2) / (chosen + rejected + ties).

    Raises ValueError for a negative count or no votes at all.
    """
    if min(chosen, rejected, ties) < 0:
        raise ValueError(f"vote counts must be >= 0, got chosen {chosen}, rejected {rejected}, ties {ties}.")
    total = chosen + rejected + ties
    if total == 0:
        raise ValueError("there are no votes (all counts are 0).")
    return (chosen + ties / 2) / total


def orient(row: dict) -> dict | None:
    """Orient a pair so that `chosen` is preferred: soft_label > 0.5 is returned as is; < 0.5 swaps chosen and
    rejected together with every `X_chosen` / `X_rejected` column pair (scores, anchors, truth) and maps s -> 1 - s;
    a tie (0.5) carries no preference and gives None (the pair is dropped); a `margin` is negated on a swap. Returns
    a new dict when it swaps."""
    s = row["soft_label"]
    if abs(s - 0.5) <= 1e-9:  # exact for vote shares; label columns may carry 0.5 with rounding noise
        return None
    if s > 0.5:
        return row
    swapped = dict(row, soft_label=1.0 - s, chosen=row["rejected"], rejected=row["chosen"])
    if "margin" in row:  # a margin of the first response over the second
        swapped["margin"] = -row["margin"]
    for key in row:
        if key.endswith("_chosen") and f"{key[:-len('_chosen')]}_rejected" in row:
            other = f"{key[:-len('_chosen')]}_rejected"
            swapped[key], swapped[other] = row[other], row[key]
    return swapped


# --------------------------------------------------------------------------------------------------------------------
# Canonical rows


def _binary(value: Any) -> int | None:
    """0 or 1 for 0/1, 0.0/1.0 and booleans; None for anything else."""
    return int(value) if isinstance(value, numbers.Real) and value in (0, 1) else None


def _number(value: Any) -> float | None:
    """A finite float, or None for anything that is not a finite real number (booleans included)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int | None:
    """An integer (3 or 3.0: csv and parquet store integer columns with gaps as floats), else None."""
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _require_columns(row: dict, names: dict[str, str], where: str) -> None:
    """Every column in `names` (config key -> column) must exist; the error lists the available ones."""
    for key, column in names.items():
        if column not in row:
            raise DataError(f"{where} has no column '{column}' (columns: {', '.join(map(str, row))}); set "
                            f"{KEY}.{key}.")


def _prompt(row: dict, column: str, system_prompt: str | None, index: int, where: str) -> list[dict]:
    value = row[column]
    if _is_empty(value):
        raise DataError(f"{where} row {index}: prompt '{column}' is empty; clean that row or set {KEY}.prompt_column.")
    if not (isinstance(value, str) or _is_messages(value)):
        raise DataError(f"{where} row {index}: prompt '{column}' is neither a string nor a list of {{'role', "
                        f"'content'}} messages: {str(value)[:200]}.")
    return to_messages(value, system_prompt)


def _response(row: dict, column: str, key: str, index: int, where: str) -> str:
    value = row[column]
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        value = value[-1]["content"]  # a chat: the response is its last message
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where} row {index}: response '{column}' is empty or not text ({type(value).__name__}); "
                        f"clean that row or set {KEY}.{key}.")
    return value


def _check_pairs_config(cfg: RewardDataConfig) -> None:
    if cfg.label_column and cfg.votes_columns:
        raise DataError(f"{KEY}.label_column and {KEY}.votes_columns are both set; the soft label comes from one of "
                        f"them: unset the other.")
    if cfg.score_columns and cfg.anchor_columns:
        raise DataError(f"{KEY}.score_columns and {KEY}.anchor_columns are both set; anchors come from scores "
                        f"(thresholded at percentiles) or are given directly: unset one.")
    if (cfg.response_columns is None) != (cfg.preferred_index_column is None) or (
            cfg.response_columns is not None and len(cfg.response_columns) != 2):
        raise DataError(f"{KEY}.response_columns (two columns) and {KEY}.preferred_index_column go together: set "
                        f"both, or neither to use chosen_column / rejected_column; got {cfg.response_columns} and "
                        f"{cfg.preferred_index_column!r}.")
    if cfg.votes_columns is not None and len(cfg.votes_columns) not in (2, 3):
        raise DataError(f"{KEY}.votes_columns must list 2 columns [chosen, rejected] or 3 [chosen, rejected, ties]; "
                        f"got {list(cfg.votes_columns)}.")
    for key in ("score_columns", "anchor_columns"):
        columns = getattr(cfg, key)
        if columns is not None and len(columns) != 2:
            raise DataError(f"{KEY}.{key} must list 2 columns [chosen, rejected]; got {list(columns)}.")


def _pair_columns(cfg: RewardDataConfig) -> dict[str, str]:
    """Config key -> source column, for every column a pairs row needs."""
    names = {"prompt_column": cfg.prompt_column}
    if cfg.preferred_index_column:
        names["preferred_index_column"] = cfg.preferred_index_column
        names.update({f"response_columns[{i}]": c for i, c in enumerate(cfg.response_columns)})
    else:
        names.update(chosen_column=cfg.chosen_column, rejected_column=cfg.rejected_column)
    for key in ("label_column", "margin_column"):
        if getattr(cfg, key):
            names[key] = getattr(cfg, key)
    for key in ("votes_columns", "score_columns", "anchor_columns"):
        names.update({f"{key}[{i}]": c for i, c in enumerate(getattr(cfg, key) or ())})
    return names


def _soft_label(row: dict, cfg: RewardDataConfig, index: int, where: str) -> float:
    if cfg.label_column:
        value = _number(row[cfg.label_column])
        if value is None or not 0 <= value <= 1:
            raise DataError(f"{where} row {index}: soft label '{cfg.label_column}' is {row[cfg.label_column]!r}, not "
                            f"a number in [0, 1] (the share of votes for the chosen response); clean that row or set "
                            f"{KEY}.label_column.")
        return value
    if cfg.votes_columns:
        counts = []
        for column in cfg.votes_columns:
            count = _count(row[column])
            if count is None:
                raise DataError(f"{where} row {index}: vote count '{column}' is {row[column]!r}, not an integer; "
                                f"clean that row or set {KEY}.votes_columns.")
            counts.append(count)
        try:
            return soft_label_from_votes(*counts)
        except ValueError as e:
            raise DataError(f"{where} row {index}: votes {', '.join(cfg.votes_columns)}: {e} Clean that row or set "
                            f"{KEY}.votes_columns.") from e
    return 1.0


def prepare_pairs(rows: list[dict], cfg: RewardDataConfig, where: str = "the reward data"
                  ) -> tuple[list[dict], int]:
    """Raw pair rows (the source's column names) -> (canonical oriented rows, number of tied pairs dropped).

    See the module docstring for the canonical row. The soft label comes from `cfg.label_column`, else from
    `cfg.votes_columns`, else is 1.0. With `response_columns` + `preferred_index_column`, the label, votes, score and
    anchor columns still describe [chosen, rejected] as the index picks them. `where` names the split in errors.
    Raises DataError for a bad config combination, a missing column, an empty prompt or response, a bad label / vote
    count / score / anchor / preferred index, no rows, or when every pair is a tie.
    """
    _check_pairs_config(cfg)
    if not rows:
        raise DataError(f"{where} has no rows.")
    _require_columns(rows[0], _pair_columns(cfg), where)
    canonical, ties = [], 0
    for i, raw in enumerate(rows):
        if cfg.preferred_index_column:  # two responses + the index of the preferred one
            preferred = _binary(raw[cfg.preferred_index_column])
            if preferred is None:
                raise DataError(f"{where} row {i}: preferred index '{cfg.preferred_index_column}' is "
                                f"{raw[cfg.preferred_index_column]!r}, not 0 or 1; clean that row or set "
                                f"{KEY}.preferred_index_column.")
            chosen_column, rejected_column = cfg.response_columns[preferred], cfg.response_columns[1 - preferred]
            chosen_key = rejected_key = "response_columns"
        else:
            chosen_column, rejected_column = cfg.chosen_column, cfg.rejected_column
            chosen_key, rejected_key = "chosen_column", "rejected_column"
        row = {"prompt": _prompt(raw, cfg.prompt_column, cfg.system_prompt, i, where),
               "chosen": _response(raw, chosen_column, chosen_key, i, where),
               "rejected": _response(raw, rejected_column, rejected_key, i, where),
               "soft_label": _soft_label(raw, cfg, i, where)}
        for column, side in zip(cfg.score_columns or (), ("chosen", "rejected")):
            score = _number(raw[column])
            if score is None:
                raise DataError(f"{where} row {i}: score '{column}' is {raw[column]!r}, not a finite number; clean "
                                f"that row or set {KEY}.score_columns.")
            row[f"score_{side}"] = score
        for column, side in zip(cfg.anchor_columns or (), ("chosen", "rejected")):
            anchor = _count(raw[column])
            if anchor is None or anchor < 0:
                raise DataError(f"{where} row {i}: anchor '{column}' is {raw[column]!r}, not a non-negative integer "
                                f"(an ordinal label 0..K); clean that row or set {KEY}.anchor_columns.")
            row[f"anchor_{side}"] = anchor
        if cfg.margin_column:
            margin = _number(raw[cfg.margin_column])
            if margin is None:
                raise DataError(f"{where} row {i}: margin '{cfg.margin_column}' is {raw[cfg.margin_column]!r}, not a "
                                f"finite number; clean that row or set {KEY}.margin_column.")
            row["margin"] = margin
        oriented = orient(row)
        if oriented is None:
            ties += 1
        else:
            canonical.append(oriented)
    if not canonical:
        raise DataError(f"all {len(rows)} pairs of {where} are ties (soft label 0.5), which carry no preference; "
                        f"check {KEY}.label_column / {KEY}.votes_columns.")
    return canonical, ties


def prepare_feedback(rows: list[dict], cfg: RewardDataConfig, where: str = "the reward data") -> list[dict]:
    """Raw feedback rows (the source's column names) -> canonical rows (see the module docstring).

    `propensity` is added when `cfg.propensity_column` is set; `true_label` when `cfg.true_label_column` is set and
    the column is present. The label of an unobserved row is never read (it is 0 in the canonical row). Raises
    DataError for a missing column, an empty prompt or response, `observed` not 0/1, an observed row without a 0/1
    label, a propensity outside (0, 1], a true label not 0/1, no rows, or no observed row.
    """
    if not rows:
        raise DataError(f"{where} has no rows.")
    names = {"prompt_column": cfg.prompt_column, "response_column": cfg.response_column,
             "observed_column": cfg.observed_column, "feedback_column": cfg.feedback_column}
    if cfg.propensity_column:
        names["propensity_column"] = cfg.propensity_column
    _require_columns(rows[0], names, where)
    if cfg.true_label_column and cfg.true_label_column not in rows[0]:
        raise DataError(f"{where} has no '{cfg.true_label_column}' column (columns: {', '.join(rows[0])}); held-out "
                        f"metrics would fall back to the noisy observed labels. Set {KEY}.true_label_column to the "
                        f"column with clean labels, or unset it.")
    true_column = cfg.true_label_column
    canonical = []
    for i, raw in enumerate(rows):
        observed = _binary(raw[cfg.observed_column])
        if observed is None:
            raise DataError(f"{where} row {i}: observed '{cfg.observed_column}' is {raw[cfg.observed_column]!r}, not "
                            f"0 or 1 (1 = the user gave feedback); clean that row or set {KEY}.observed_column.")
        label = _binary(raw[cfg.feedback_column]) if observed else 0
        if label is None:
            raise DataError(f"{where} row {i}: label '{cfg.feedback_column}' is {raw[cfg.feedback_column]!r} on an "
                            f"observed row; every row with feedback needs a 0/1 label. Clean that row or set "
                            f"{KEY}.feedback_column.")
        row = {"prompt": _prompt(raw, cfg.prompt_column, cfg.system_prompt, i, where),
               "response": _response(raw, cfg.response_column, "response_column", i, where),
               "observed": observed, "label": label}
        if cfg.propensity_column:
            propensity = _number(raw[cfg.propensity_column])
            if propensity is None or not 0 < propensity <= 1:
                raise DataError(f"propensities must be probabilities P(feedback | row) in (0, 1]; {where} row {i}: "
                                f"'{cfg.propensity_column}' is {raw[cfg.propensity_column]!r}. Clean that row or set "
                                f"{KEY}.propensity_column.")
            row["propensity"] = propensity
        if true_column:
            true_label = _binary(raw[true_column])
            if true_label is None:
                raise DataError(f"{where} row {i}: true label '{true_column}' is {raw[true_column]!r}, not 0 or 1; "
                                f"clean that row or set {KEY}.true_label_column.")
            row["true_label"] = true_label
        canonical.append(row)
    if not any(row["observed"] for row in canonical):
        raise DataError(f"no row of {where} has feedback: '{cfg.observed_column}' is 0 in all {len(rows)} rows, so "
                        f"there is no label to learn from. Check {KEY}.observed_column.")
    return canonical


# --------------------------------------------------------------------------------------------------------------------
# Loading

# loading.py's messages name the policy data's keys (data.source, ...); the reward data's live under algorithm.data.
_POLICY_KEY = re.compile(r"(?<![\w./-])data\.(source|subset|split|eval_split|eval_size)\b")


def load_reward_data(cfg: RewardDataConfig, objective: str) -> tuple[list[dict], list[dict] | None, dict]:
    """(train rows, held-out rows or None, info) in the canonical format of `objective`: feedback rows for
    causal_rm, pairs otherwise. info: {"dropped_ties", "dropped_ties_eval"} for pairs, {"observed_rows"} (train)
    for feedback.

    Source "synthetic": pairs are `synthetic_preferences(num_train + num_eval)` split into the first num_train rows
    and the rest, labelled by their votes with the judge scores as score columns, plus the truth columns; feedback is
    `synthetic_feedback` (train) and `unbiased_feedback_eval` (held out, with true_label, mu and sigma). Set
    `propensity_column=true_propensity` to train with the known propensities. eval_split / eval_size do not apply.
    Other sources load like the policy data: held-out = `cfg.eval_split` when set, else the last `cfg.eval_size`
    rows of train when > 0, else None. Everywhere `cfg.max_rows` then keeps the first rows of train, and true labels
    are read on held-out rows only. Raises DataError.
    """
    feedback = objective == "causal_rm"
    if cfg.source == "synthetic":
        train, held_out, cfg, train_name, held_name = _synthetic_source(cfg, feedback)
    else:
        train, held_out, train_name, held_name = _file_or_hub_source(cfg)
    if cfg.max_rows is not None:
        if cfg.max_rows < 1:
            raise DataError(f"{KEY}.max_rows must be >= 1 (or null for all rows), got {cfg.max_rows}.")
        train = train[:cfg.max_rows]

    if feedback:
        train = prepare_feedback(train, dataclasses.replace(cfg, true_label_column=None), train_name)
        held_out = prepare_feedback(held_out, cfg, held_name) if held_out is not None else None
        if held_out is not None and cfg.source == "synthetic":
            for row in held_out:
                row["mu"], row["sigma"] = response_truth(row["response"])
        return train, held_out, {"observed_rows": sum(row["observed"] for row in train)}

    train, dropped = prepare_pairs(train, cfg, train_name)
    held_dropped = 0
    if held_out is not None:
        held_out, held_dropped = prepare_pairs(held_out, cfg, held_name)
    if cfg.source == "synthetic":  # the truth is a function of the text, so it follows any swap or drop
        for row in train + (held_out or []):
            row["mu_chosen"], row["sigma_chosen"] = response_truth(row["chosen"])
            row["mu_rejected"], row["sigma_rejected"] = response_truth(row["rejected"])
    return train, held_out, {"dropped_ties": dropped, "dropped_ties_eval": held_dropped}


def _synthetic_source(cfg: RewardDataConfig, feedback: bool
                      ) -> tuple[list[dict], list[dict] | None, RewardDataConfig, str, str]:
    """Raw synthetic rows and the config that reads them (the synthetic columns replace the configured ones)."""
    s = cfg.synthetic
    if s.num_train < 1 or s.num_eval < 0:
        raise DataError(f"{KEY}.synthetic.num_train must be >= 1 and num_eval >= 0; got {s.num_train} and "
                        f"{s.num_eval}.")
    try:
        if feedback:
            train = synthetic_feedback(s.num_train, s.seed, s.rho_01, s.rho_10, tuple(s.propensity), s.selection)
            held_out = unbiased_feedback_eval(s.num_eval, s.seed) if s.num_eval else None
        else:
            rows = synthetic_preferences(s.num_train + s.num_eval, s.seed, s.annotators)
            train, held_out = rows[:s.num_train], (rows[s.num_train:] or None)
    except ValueError as e:  # the generators' messages start with the parameter's name
        raise DataError(f"{KEY}.synthetic.{e}") from e
    columns = dict(prompt_column="prompt", chosen_column="chosen", rejected_column="rejected",
                   response_columns=None, preferred_index_column=None, label_column=None,
                   votes_columns=["votes_chosen", "votes_rejected"], score_columns=["score_chosen", "score_rejected"],
                   anchor_columns=None, response_column="response", observed_column="observed",
                   feedback_column="label", true_label_column="true_label")
    kind = "feedback" if feedback else "preferences"
    return (train, held_out, dataclasses.replace(cfg, **columns), f"synthetic {kind} (train)",
            f"synthetic {kind} (held-out)")


def _file_or_hub_source(cfg: RewardDataConfig) -> tuple[list[dict], list[dict] | None, str, str]:
    try:
        train, held_out = _load_source(DataConfig(source=cfg.source, subset=cfg.subset, split=cfg.split,
                                                  eval_split=cfg.eval_split))
    except DataError as e:
        raise DataError(_POLICY_KEY.sub(rf"{KEY}.\1", str(e))) from e
    train_name = f"'{cfg.source}' (split {cfg.split})"
    train = train.to_list()
    if not train:
        raise DataError(f"{train_name} has no rows.")
    if held_out is not None:
        return train, held_out.to_list(), train_name, f"'{cfg.source}' (split {cfg.eval_split})"
    if cfg.eval_size > 0:
        # Carve before truncating to max_rows, so max_rows never changes which rows are held out.
        if cfg.eval_size >= len(train):
            raise DataError(f"{KEY}.eval_size {cfg.eval_size} leaves no training rows: {train_name} has only "
                            f"{len(train)} rows. Lower {KEY}.eval_size, or set {KEY}.eval_split.")
        return (train[:-cfg.eval_size], train[-cfg.eval_size:], train_name,
                f"'{cfg.source}' (last {cfg.eval_size} rows of split {cfg.split})")
    return train, None, train_name, ""
