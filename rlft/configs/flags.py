"""A job's config from its command line and, with `--config`, a recipe file: one line for every refusal.

tyro draws its errors in a box whose line breaks depend on the terminal's width; a refusal here is one plain
line whatever the width and with no terminal at all (a CI log, `ray job submit`). tyro's parse-error hook
hands over each failure as a structured event (the bad flag, the tokens, or the config's own ValueError from
its checks) before anything is drawn; `--help` prints in full.
"""

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

import tyro
from tyro import _errors  # the parse-error hook: private in tyro 1.0, hence the pin in pyproject.toml

from rlft.configs.recipes import load_recipe


class Refused(ValueError):
    """The command line or recipe was refused; its message is the one line to print."""


def parse_config(
    config_type: type, job: str, args: Sequence[str], description: str | None = None, prog: str | None = None
) -> Any:
    """The config `args` ask for: a recipe's keys first (`--config`), then the flags, the last one winning.
    A bad flag, value or recipe raises Refused with one line naming the field or the file."""
    args = list(args)
    recipe = config_flag(args)
    tokens = [] if recipe is None else recipe_tokens(load_recipe(recipe, job, config_type), config_type)
    if recipe is not None and "config" not in fields_of(config_type):  # a job that does not record it
        args = without_config_flag(args)
    with _errors.on_parse_error(refuse):
        return tyro.cli(config_type, args=tokens + args, description=description, prog=prog)


def config_flag(args: list[str]) -> str | None:
    """The value of the last `--config` in args, if any."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--config="):
            found = arg.removeprefix("--config=")
    return found if found not in (None, "None") else None


def without_config_flag(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if not skip and arg != "--config" and not arg.startswith("--config="):
            kept.append(arg)
        skip = arg == "--config"
    return kept


def recipe_tokens(values: dict[str, Any], config_type: type) -> list[str]:
    """The recipe's values as the flags that set them (checked and typed by load_recipe already)."""
    hints = typing.get_type_hints(config_type)
    tokens = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if hints[key] is bool:
            tokens.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, tuple):
            tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, repr(value) if isinstance(value, float) else str(value)]
    return tokens


def refuse(event: _errors.ParseErrorEvent) -> None:
    """tyro's parse-error hook: every failure becomes one Refused line instead of a drawn box."""
    raise Refused(f"{describe(event)} (--help lists every flag)")


def describe(event: _errors.ParseErrorEvent) -> str:
    if isinstance(event, _errors.InstantiationFailure):  # a check of the config, or a value of a wrong type
        if event.argument is None:
            return event.message
        return f"--{flag_name(event.argument)}: {event.message}"
    if isinstance(event, _errors.UnrecognizedArgs):
        return f"unknown flag {' '.join(event.tokens)}"
    if isinstance(event, _errors.MissingArgs):
        return "missing " + ", ".join(f"--{flag_name(a.arg)}" for a in event.missing_arguments)
    if isinstance(event, _errors.InvalidChoice):
        choices = ", ".join(event.choices)
        return f"--{flag_name(event.argument)} {event.value!r} is not allowed: one of {choices}"
    if isinstance(event, _errors.BadValue):
        if event.reason == "too_few_values":
            return f"--{flag_name(event.argument)} needs a value"
        return f"--{flag_name(event.argument)} takes no value (got {event.offending_value!r})"
    return f"the flags could not be read ({type(event).__name__})"


def flag_name(argument: Any) -> str:
    field = getattr(argument, "field", None)
    name = getattr(field, "intern_name", None) or str(argument)
    return name.replace("_", "-")


def fields_of(config_type: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_type) if f.init]
