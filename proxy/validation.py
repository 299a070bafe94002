"""The building blocks of the config schema (pydantic v2) and the one translation of its errors.

Every section of the config file is a `Section` (a frozen pydantic model that refuses unknown
keys; the error says which keys the section knows, or what a renamed key became). Field types carry the house rules that pydantic's lax mode does not:
an `Int` accepts `8080`, `8080.0` and `"8080"` (flags and env vars are strings) but not `True`;
a `Number` accepts ints, finite floats and numeric strings, never booleans. `messages()` turns a
`ValidationError` into our `path.to.field: what is wrong` lines, every bad field at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import UnionType
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError


def as_int(value: Any) -> int | None:
    """The one integer rule for every config section: an int, an integral float (8080.0) or a
    decimal string ("8080", as env vars and flags give); booleans and anything else are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            number = as_float(text)
            return None if number is None or not number.is_integer() else int(number)
    return None


def as_float(value: Any) -> float | None:
    """The one number rule: an int, a finite float or a numeric string; booleans are None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int:
    number = as_int(value)
    if number is None:
        raise PydanticCustomError("tbg_int", "expected an integer, got {got}", {"got": repr(value)})
    return number


def _number(value: Any) -> float:
    number = as_float(value)
    if number is None:
        raise PydanticCustomError(
            "tbg_number", "expected a number, got {got}", {"got": repr(value)}
        )
    return number


Int = Annotated[int, BeforeValidator(_int)]
Number = Annotated[float, BeforeValidator(_number)]
Text = Annotated[str, Field(min_length=1)]


def field_error(field: str, message: str) -> PydanticCustomError:
    """An error about `field`, a path relative to where it is raised (a section's after-validator
    names its own field; the root's cross-field checks name a whole path, `upstreams[1].name`)."""
    return PydanticCustomError(
        "tbg_field", "{field}: {detail}", {"field": field, "detail": message}
    )


class Section(BaseModel):
    """One mapping of the config file: frozen, unknown keys refused (reported with the keys the
    section knows, see `messages`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    # Old key -> why it was renamed; a file that still uses it is told what it became.
    renamed: ClassVar[Mapping[str, str]] = {}


def _inner(annotation: Any) -> Any:
    """Strip `Annotated[...]` and `X | None` down to X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _keys(section: type[Section]) -> dict[str, str]:
    """A section's keys in the file (a field's alias where it has one) -> field names."""
    return {info.alias or name: name for name, info in section.model_fields.items()}


def section_at(root: type[Section], loc: Sequence[int | str]) -> type[Section] | None:
    """The section class that holds location `loc` (a list index or mapping key steps into the
    item type), or None when `loc` leaves the schema."""
    current: Any = root
    for part in loc:
        if isinstance(current, type) and issubclass(current, Section):
            keys = _keys(current)
            if not isinstance(part, str) or part not in keys:
                return None
            current = _inner(current.model_fields[keys[part]].annotation)
        elif get_origin(current) in (list, tuple):  # tuple[X, ...]
            current = _inner(get_args(current)[0])
        elif get_origin(current) in (dict, Mapping):
            current = _inner(get_args(current)[1])
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, Section) else None


def location(loc: Sequence[int | str]) -> str:
    """('upstreams', 1, 'base_url') -> 'upstreams[1].base_url'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _join(where: str, field: str) -> str:
    if not where or not field:
        return where or field
    return f"{where}{field}" if field.startswith("[") else f"{where}.{field}"


def _detail(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = repr(error.get("input"))
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx[key]}, got {got}"
    if kind == "missing":
        return "required"
    if kind in ("string_type", "string_too_short"):
        return f"must be a non-empty string, got {got}"
    if kind == "bool_type":
        return f"expected true or false, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"must be a mapping, got {got}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _unknown(root: type[Section], loc: Sequence[int | str]) -> str:
    section = section_at(root, loc[:-1])
    if section is None:
        return "unknown field"
    key = str(loc[-1])
    if key in section.renamed:
        return f"renamed to {section.renamed[key]}"
    return f"unknown field (known: {', '.join(sorted(_keys(section)))})"


def messages(exc: ValidationError, root: type[Section], prefix: str = "") -> list[str]:
    """Every error as `path: detail`, in the file's order; `root` is the validated model,
    `prefix` roots the paths (`shadow` when the shadow section is validated alone)."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        where = _join(prefix, location(error["loc"]))
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: {_unknown(root, error['loc'])}")
        elif error["type"] == "tbg_field":
            ctx = error.get("ctx") or {}
            lines.append(f"{_join(where, str(ctx['field']))}: {ctx['detail']}")
        elif where:
            lines.append(f"{where}: {_detail(error)}")
        else:
            lines.append(_detail(error))
    return list(dict.fromkeys(lines))
