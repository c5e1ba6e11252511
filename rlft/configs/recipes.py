"""Recipes: TOML files whose keys are a job's config fields, plus `job` naming the command they are for.

Shipped recipes live in rlft/recipes/ and load by name (`--config sdxl-d3po-pickscore`); any other file loads
by path (`--config ./my-recipe.toml`). Every key is checked against the job's config before anything starts:
an unknown key, a value of the wrong type or a recipe for another job is refused in one line naming the file
and the key. Flags given beside `--config` override the file.
"""

import dataclasses
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

SHIPPED = "rlft.recipes"


def shipped_recipes() -> dict[str, str]:
    """{name: the first line of its header comment} for every recipe in the package."""
    found = {}
    for entry in sorted(resources.files(SHIPPED).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            first = next((line for line in entry.read_text().splitlines() if line.startswith("#")), "#")
            found[entry.name.removesuffix(".toml")] = first.lstrip("# ").strip()
    return found


def recipe_path(name_or_path: str) -> Path:
    """The file a `--config` value names: an existing path, else a shipped recipe's name."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = resources.files(SHIPPED) / f"{name_or_path.removesuffix('.toml')}.toml"
    if "/" not in name_or_path and shipped.is_file():
        return Path(str(shipped))
    names = ", ".join(shipped_recipes())
    raise ValueError(f"config={name_or_path!r} is not allowed: no such file and no shipped recipe ({names})")


def load_recipe(name_or_path: str, job: str, config_type: type) -> dict[str, Any]:
    """The recipe's field values for `config_type`, converted to the fields' types (arrays to tuples)."""
    path = recipe_path(name_or_path)
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"recipe {path}: not TOML ({error})") from None
    named = values.pop("job", None)
    if named != job:
        raise ValueError(f"recipe {path}: job = {named!r}, but this command is {job!r} (run `rlft {named}`)")
    fields = {f.name: f for f in dataclasses.fields(config_type) if f.init}
    hints = typing.get_type_hints(config_type)
    typed = {}
    for key, value in values.items():
        if key not in fields or key in ("config", "dry_run"):
            raise ValueError(f"recipe {path}: unknown key {key!r} (a {config_type.__name__} field expected)")
        converted = convert(value, hints[key])
        if converted is _WRONG:
            raise ValueError(f"recipe {path}: {key} = {value!r} is not {describe(hints[key])}")
        typed[key] = converted
    return typed


_WRONG = object()


def convert(value: Any, annotation: Any) -> Any:
    """`value` (as TOML read it) as `annotation` wants it, or _WRONG. TOML has no null: an optional field
    takes its inner type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None) and (converted := convert(value, arg)) is not _WRONG:
                return converted
        return _WRONG
    if origin is Literal:
        return value if value in args else _WRONG
    if origin is tuple:
        if not isinstance(value, list):
            return _WRONG
        items = [convert(item, args[0]) for item in value]
        return _WRONG if any(item is _WRONG for item in items) else tuple(items)
    if annotation is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _WRONG
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if annotation in (bool, str):
        return value if isinstance(value, annotation) else _WRONG
    return _WRONG


def describe(annotation: Any) -> str:
    """'a float', 'one of 'a', 'b'', 'a list of str': what a key of this type takes."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args if arg is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}"
    name = getattr(annotation, "__name__", str(annotation))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"
