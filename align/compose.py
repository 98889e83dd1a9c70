"""From the command line to a checked config: recipes by name or file, and every composed config validated before
Hydra starts the run (a sweep: every point before any launches), with one readable line for each mistake.

Nothing here imports torch, transformers or TRL: a config error prints within seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from align.config import CONFIGS_DIR, ConfigError, unknown_key_message, validate
from align.files import cache_dir
from align.methods import register_configs
from align.tracking import redact_override

# In a clone a symlink to the repository's recipes/; a wheel carries them as package data.
RECIPES_DIR = Path(__file__).parent / "_recipes"


class RecipeError(ValueError):
    """`recipe=` names no recipe; the message lists the available ones."""


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _user_recipe_root(path: Path, name: str) -> Path:
    """A search-path root holding `recipe/<name>.yaml` -> the user's file, so Hydra composes it like a built-in."""
    root = cache_dir() / "user-recipes" / hashlib.sha256(str(path).encode()).hexdigest()[:12]
    link = root / "recipe" / f"{name}.yaml"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink() or link.resolve() != path:
        # Every rank of a launch gets here at once: build the link under a private name, then rename atomically.
        staging = link.with_name(f".{name}.{os.getpid()}.yaml")
        staging.unlink(missing_ok=True)
        staging.symlink_to(path)
        os.replace(staging, link)
    return root


def _check_recipe_file(path: Path) -> None:
    """A recipe of one's own must be a YAML mapping under Hydra's `# @package _global_` header: without the header
    Hydra nests the file under `recipe` and refuses each of its keys ("Key 'recipe' not in 'AlignConfig'")."""
    try:
        text = path.read_text(encoding="utf-8")
        content = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"Recipe file '{path}' is not valid YAML{where}: {getattr(err, 'problem', None) or err}."
                          ) from None
    if content is not None and not isinstance(content, dict):
        raise RecipeError(f"Recipe file '{path}' must be a mapping of config keys (e.g. `trainer: {{max_steps: 10}}`), "
                          f"not a {type(content).__name__}.")
    header = [line.strip() for line in text.splitlines() if line.strip()]
    header = header[:next((i for i, line in enumerate(header) if not line.startswith("#")), len(header))]
    if not any(line.replace(" ", "") == "#@package_global_" for line in header):
        raise RecipeError(f"Recipe file '{path}' lacks the header line '# @package _global_'; add it as the first "
                          f"line (a recipe sets keys of the whole config, such as trainer.max_steps).")


def resolve_recipe_args(argv: list[str]) -> list[str]:
    """Check `recipe=` before Hydra runs; turn a recipe given as a file path into a Hydra search-path entry."""
    resolved = []
    for arg in argv:
        if not arg.startswith("recipe="):
            resolved.append(arg)
            continue
        value = arg.split("=", 1)[1]
        if value.endswith((".yaml", ".yml")) or "/" in value:
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise RecipeError(f"Recipe file '{value}' does not exist.")
            _check_recipe_file(path)
            name = path.stem if path.stem not in available_recipes() else f"{path.stem}-user"
            resolved += [f"recipe={name}", f"hydra.searchpath=[file://{_user_recipe_root(path, name)}]"]
            continue
        known = available_recipes()
        for name in value.split(","):  # a comma-separated list sweeps over recipes in multirun mode
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise RecipeError(f"Unknown recipe '{name}'.{hint} Available recipes: {', '.join(known)}. "
                                  f"A recipe can also be a path to your own YAML file.")
        resolved.append(arg)
    return resolved


def check_config(overrides: list[str], multirun: bool = False) -> None:
    """Compose and `validate` the run's config before Hydra starts it (seconds before any heavy import), or every
    point of a multirun sweep (the basic sweeper's cartesian product of `overrides`) before it launches any; raise
    ConfigError naming the key, and in a sweep the first bad point by its swept values. A point's process count is
    its Slurm launcher's nodes x tasks_per_node, else this launch's."""
    register_configs()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(override_syntax_problem(overrides) or composition_error(err)) from None
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()} if multirun else set()
    points = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [overrides]
    with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base="1.3"):
        if multirun:  # Hydra composes the fixed overrides as given, before the sweeper keeps the last of a repeated key
            try:
                compose(config_name="config", overrides=[o.input_line for o in parsed if not o.is_sweep_override()])
            except HydraException as err:  # e.g. `+key=a +key=b`
                raise ConfigError(composition_error(err)) from None
        for number, point in enumerate(points):
            values = " ".join(redact_override(o) for o in point if o.split("=", 1)[0] in swept)
            where = f"sweep point {number} ({values}): " if multirun else ""
            try:
                cfg = compose(config_name="config", overrides=point, return_hydra_config=True)
                launcher = cfg.hydra.launcher
                processes = launcher.nodes * launcher.tasks_per_node if multirun and "tasks_per_node" in launcher \
                    else None
                with open_dict(cfg):
                    del cfg["hydra"]
                validate(OmegaConf.to_object(cfg), processes=processes, in_sweep=multirun)
            except ConfigError as err:
                raise ConfigError(f"{where}{err}") from None
            except HydraException as err:
                raise ConfigError(f"{where}{composition_error(err)}") from None


def override_syntax_problem(overrides: list[str]) -> str | None:
    """Why overrides that Hydra cannot parse are not setting=value, when a space explains it: one around '=' that
    the shell split off (`key= 3` arrives as `key=` and `3`, `key =3` as `key` and `=3`) or one inside a quoted
    key (`'key =3'`); else None. Values are redacted."""
    for override, following in zip(overrides, [*overrides[1:], ""]):
        key, equals, value = override.partition("=")
        if equals and " " in key:  # Hydra's keys never hold a space
            where, fixed = "before '='", key.replace(" ", "") + "=" + value
        elif equals and not value and following and "=" not in following and not following.startswith("-"):
            where, fixed = "after '='", override + following
        elif not equals and following.startswith("=") and not override.startswith(("-", "~")):
            where, fixed = "before '='", override + following
        else:
            continue
        shown = redact_override(fixed)
        shown = shown.replace("=", "= " if where == "after '='" else " =", 1)
        return f"override '{shown}' is not setting=value (a space {where}?); write {redact_override(fixed)}."
    return None


def composition_error(err: Exception) -> str:
    """One line for a Hydra composition error: an unknown key with the closest setting, a new key of an open dict
    given without its '+', an unknown config group option with the closest one, else Hydra's message. The
    OmegaConf error is the exception's cause, or (a key set in a recipe file) only its context."""
    if isinstance(err, MissingConfigException) and err.options and "/" in (err.missing_cfg_file or ""):
        return unknown_option_message(err.missing_cfg_file, err.options)
    cause = err.__cause__ or err.__context__
    if not (isinstance(cause, OmegaConfBaseException) and cause.full_key):
        return " ".join(str(err).split())
    message = str(err)
    where = f"{message.split(chr(39))[1]}: " if message.startswith("In '") else ""  # the file that sets the key
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type):
        return where + unknown_key_message(cause.full_key, cause.object_type)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.object_type is dict:
        key = cause.full_key.replace("[", ".").replace("]", "")
        return (f"{where}{cause.full_key} is a new key of an open dict: add it with a leading '+' "
                f"(+{key}=VALUE).")
    return f"{where}{cause.full_key}: {str(cause).splitlines()[0]}."


def unknown_option_message(missing: str, options: list[str]) -> str:
    """`group=name` names no option of a config group (`missing` is Hydra's 'group/name'): the closest option and
    the list, without the typed schemas that Hydra lists too (`*_schema`, not meant to be chosen)."""
    group, _, name = missing.rpartition("/")
    choices = [option for option in options if not option.endswith("_schema")]
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"; did you mean {close[0]}?" if close else "."
    return f"{group}={name}: no such option{hint} Options: {', '.join(choices)}."
