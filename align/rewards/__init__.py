"""Reward sources: build them from config, guard them, combine them, and check them before any model loads.

A reward source is any callable with TRL's reward-function signature

    fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]

(see `align.rewards.verifiers` for the full contract). Config names a built-in verifier or a user function
by import path; `build_reward_sources` turns the `reward.sources` list into guarded callables and weights for
GRPOTrainer's `reward_funcs` and `reward_weights`. The guard turns a crash or a bad value deep inside a
training step into an error that names the source and the sample.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers

from omegaconf import OmegaConf

from align.config import reward_source_problem
from align.rewards.reward_model import reward_model
from align.rewards.verifiers import VERIFIERS, completion_text

BUILTIN_REWARDS = {**VERIFIERS, "reward_model": reward_model}

__all__ = [
    "BUILTIN_REWARDS",
    "RewardConfigError",
    "RewardError",
    "build_reward_sources",
    "guard",
    "preflight",
    "resolve_reward",
    "weighted_sum",
]

# Arguments TRL itself passes; a config kwarg of the same name would be silently overridden at call time.
_CALL_ARGUMENTS = ("prompts", "completions", "completion_ids")


class RewardError(RuntimeError):
    """A reward source failed on real data; the message names the source and the sample."""


class RewardConfigError(ValueError):
    """A reward source cannot be built from config; the message names the source and the fix."""


def _import_target(name: str):
    """The object an import path `package.module:attr` or `package.module.attr` points to."""
    module_name, _, attribute = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        target = importlib.import_module(module_name)
    except Exception as error:  # a syntax error or failing import inside the user's module, too
        raise RewardConfigError(
            f"Reward source '{name}': cannot import module '{module_name}': {type(error).__name__}: {error}"
        ) from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardConfigError(
                f"Reward source '{name}': module '{module_name}' has no attribute '{attribute}'."
            )
        target = getattr(target, part)
    return target


def _check_kwargs(fn, kwargs: dict, name: str, strict: bool) -> None:
    """Reject config kwargs the function cannot take. Built-ins (strict) must name each one as a parameter:
    their **kwargs only soak up TRL's extra columns, so a typo there would be ignored without a word."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return
    named = [p for p, v in parameters.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    takes_any = not strict and any(v.kind is v.VAR_KEYWORD for v in parameters.values())
    options = [p for p in named if p not in _CALL_ARGUMENTS]
    for key in kwargs:
        if key in _CALL_ARGUMENTS or (key not in named and not takes_any):
            listed = ", ".join(options) or "none"
            raise RewardConfigError(f"Reward source '{name}' has no option '{key}'; its options: {listed}.")


def resolve_reward(name: str, kwargs: dict | None = None):
    """The reward function `name` refers to, with `kwargs` bound by functools.partial.

    `name` is a built-in (`BUILTIN_REWARDS`) or an import path `package.module:function` or
    `package.module.function`. Raises RewardConfigError for an unknown built-in (listing them, with a close
    match if any: `align.config.reward_source_problem`, which validation runs before anything loads), a module
    that fails to import, a missing attribute, something that is not a function, or kwargs the function does not
    take.
    """
    kwargs = _plain(kwargs or {})
    problem = reward_source_problem(name)
    if problem:
        raise RewardConfigError(problem)
    if name in BUILTIN_REWARDS:
        fn = BUILTIN_REWARDS[name]
    else:
        fn = _import_target(name)
        if inspect.isclass(fn) or not callable(fn):
            raise RewardConfigError(
                f"Reward source '{name}' is a {type(fn).__name__}, not a function; point it at a function "
                "fn(prompts, completions, **kwargs) -> list[float | None] (or at an instance with __call__)."
            )
    _check_kwargs(fn, kwargs, name, strict=name in BUILTIN_REWARDS)
    if not kwargs:
        return fn
    bound = functools.partial(fn, **kwargs)
    bound.__name__ = getattr(fn, "__name__", type(fn).__name__)
    bound.__doc__ = fn.__doc__
    return bound


def _plain(kwargs) -> dict:
    """Hydra hands over a DictConfig; user functions should see plain dicts and lists."""
    return OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)


def _excerpt(value, limit: int = 200) -> str:
    """A prompt or completion as a short quoted string for error messages."""
    text = (
        value if isinstance(value, str) else completion_text(value) if isinstance(value, list) else str(value)
    )
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(index: int, prompts, completions) -> str:
    prompt = _excerpt(prompts[index]) if index < len(prompts) else "<missing>"
    return f"sample {index} (prompt: {prompt}, completion: {_excerpt(completions[index])})"


def _sample(index: int, n: int, prompts, completions, completion_ids, columns) -> dict:
    """The call arguments restricted to sample `index`: every list aligned with the completions is sliced,
    anything else (trainer_state, log_metric, ...) passes through."""

    def cut(value):
        return value[index : index + 1] if isinstance(value, (list, tuple)) and len(value) == n else value

    return dict(
        prompts=cut(prompts),
        completions=cut(completions),
        completion_ids=cut(completion_ids),
        **{key: cut(value) for key, value in columns.items()},
    )


def _failure(fn, name: str, error: Exception, prompts, completions, completion_ids, columns) -> RewardError:
    """A RewardError naming the first sample that raises the same type of error on its own, or the whole batch
    if none does."""
    n, where = len(completions), None
    for index in range(n):
        try:
            fn(**_sample(index, n, prompts, completions, completion_ids, columns))
        except Exception as replayed:  # noqa: BLE001 - any error type may be the one we are looking for
            if type(replayed) is type(error):
                where = _describe(index, prompts, completions)
                break
    where = where or f"a batch of {n} completions; no single completion reproduces it"
    hint = ""
    if isinstance(error, TypeError) and "unexpected keyword argument" in str(error):
        hint = (
            ". Reward functions are called with keyword arguments prompts, completions, completion_ids, "
            "every dataset column and TRL's trainer_state, log_extra, log_metric: end the signature with "
            "**kwargs"
        )
    return RewardError(f"reward function '{name}' raised {error!r} on {where}{hint}")


def _as_float(value):
    """A reward value as float or None. bool, int, numpy and torch scalars are converted; anything else (a
    string, a list) is returned unchanged for the caller to report."""
    if value is None or isinstance(value, numbers.Real):
        return None if value is None else float(value)
    try:
        item = value.item()  # numpy and torch scalars; raises for more than one element
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return value
    return float(item) if isinstance(item, numbers.Real) else value


def _check_output(values, name: str, prompts, completions) -> list[float | None]:
    """`values` as a list of float | None, one per completion, all finite; RewardError otherwise."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise RewardError(
            f"reward function '{name}' returned a {type(values).__name__}; it must return a list with one "
            f"value per completion ({len(completions)} here)."
        )
    if len(values) != len(completions):
        raise RewardError(
            f"reward function '{name}' returned {len(values)} values for {len(completions)} completions; "
            "it must return one value per completion (None where it does not apply)."
        )
    rewards = []
    for index, value in enumerate(values):
        reward = _as_float(value)
        if reward is not None and not isinstance(reward, float):
            raise RewardError(
                f"reward function '{name}' returned {value!r} ({type(value).__name__}) for "
                f"{_describe(index, prompts, completions)}; each value must be a number or None."
            )
        if reward is not None and not math.isfinite(reward):
            raise RewardError(
                f"reward function '{name}' returned {reward} for {_describe(index, prompts, completions)}. "
                "Rewards must be finite; return None for a sample the function does not apply to."
            )
        rewards.append(reward)
    return rewards


def guard(fn, name: str):
    """`fn` wrapped so that failures name the source and the sample; the wrapper's `__name__` is `name` (TRL
    logs each reward under it).

    The wrapper takes and passes on the same arguments as `fn`. If `fn` raises, it is replayed on one-sample
    slices to find the first failing sample, and RewardError (chained from the original error) names it. The
    output must hold one value per completion, each None or a finite real number; it is returned as a list of
    float | None.
    """
    if inspect.iscoroutinefunction(getattr(fn, "func", fn)):
        raise RewardConfigError(f"Reward source '{name}' is async; align calls them synchronously.")

    @functools.wraps(fn)
    def guarded(prompts, completions, completion_ids=None, **columns):
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except Exception as error:
            raise _failure(fn, name, error, prompts, completions, completion_ids, columns) from error
        return _check_output(values, name, prompts, completions)

    guarded.__name__ = guarded.__qualname__ = name
    return guarded


def weighted_sum(sources: list, weights: list[float]):
    """A reward source whose value is sum(w_i * r_i) over the sources with a value (not None, not NaN) for the
    sample, and None when no source has one. This is GRPOTrainer's aggregation: rewards_per_func times the
    weights, nansum over sources, and rows where every source is NaN marked unscorable."""
    if len(sources) != len(weights):
        raise RewardConfigError(f"weighted_sum got {len(sources)} sources but {len(weights)} weights.")
    if not sources:
        raise RewardConfigError("weighted_sum needs at least one reward source.")
    weights = [float(w) for w in weights]

    def weighted(prompts, completions, completion_ids=None, **columns):
        tables = [
            source(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
            for source in sources
        ]
        totals = []
        for row in zip(*tables, strict=True):
            terms = [w * r for w, r in zip(weights, row) if r is not None and not math.isnan(r)]
            totals.append(math.fsum(terms) if terms else None)
        return totals

    weighted.__name__ = weighted.__qualname__ = "weighted_sum"
    return weighted


def build_reward_sources(configs) -> tuple[list, list[float]]:
    """Guarded reward callables and their weights from `reward.sources` (items with `.name`, `.weight` and
    `.kwargs`).

    Each callable is named after its config name for a built-in, or the function's own name for an import
    path; repeated names get `_2`, `_3`, ... so TRL logs each source under its own metric. Raises
    RewardConfigError.
    """
    sources, weights, taken = [], [], set()
    for config in configs:
        fn = resolve_reward(config.name, config.kwargs)
        weight = float(config.weight)
        if not math.isfinite(weight):
            raise RewardConfigError(f"Reward source '{config.name}' has weight {weight}; it must be finite.")
        base = config.name if config.name in BUILTIN_REWARDS else getattr(fn, "__name__", type(fn).__name__)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        sources.append(guard(fn, name))
        weights.append(weight)
    return sources, weights


def _ignore(*args, **kwargs) -> None:
    return None


def preflight(sources, rows, num_rows: int = 2) -> None:
    """Call each source on the first `num_rows` training rows, before any model is loaded, so a broken source
    or a missing column fails in seconds rather than after the first generation.

    The completion is the row's reference `solution` (else its `answer`, else ""), conversational when the
    prompt is; the other columns and TRL's extra kwargs (trainer_state, log_extra, log_metric) are passed as
    TRL passes them. RewardError from a guarded source propagates as is.
    """
    rows = [rows[i] for i in range(min(num_rows, len(rows)))]
    if not rows:
        return
    prompts = [row.get("prompt") for row in rows]
    completions = []
    for row, prompt in zip(rows, prompts):
        text = row.get("solution") if row.get("solution") is not None else row.get("answer")
        text = "" if text is None else str(text)
        completions.append([{"role": "assistant", "content": text}] if isinstance(prompt, list) else text)
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
    for source in sources:
        source(
            prompts=prompts,
            completions=completions,
            completion_ids=None,
            trainer_state=None,
            log_extra=_ignore,
            log_metric=_ignore,
            **columns,
        )
