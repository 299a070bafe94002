"""Where a config field may come from besides the file: `TBG_*` variables and `tbg serve` flags.

A field says so once, beside its type and default, with a marker in its `Annotated[...]`:
`Env()` (the variable is `TBG_` + the field's path in upper case: `shadow.worker` ->
`TBG_SHADOW_WORKER`) and `Flag("--port")`. `knobs(Config)` walks the schema for them; the `tbg serve`
parser, its help (default included), the docs tables and the merge below all read that one walk.

Why not pydantic-settings: the proxy validates against an *injected* environment (tests and the
shadow worker pass their own; `os.environ` is never read), its key checks need that environment as
validation context, its variables are a closed list (pydantic-settings would also read
`TBG_UPSTREAMS`, `TBG_SHADOW` as JSON), and its flags keep their short names and one-line errors
(the library's CLI source makes `--shadow.sample_rate` and prints argparse's usage block). What
would be left for it is the dozen lines of `merge`, for a new dependency (and python-dotenv).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from proxy.validation import Section


@dataclass(frozen=True, slots=True)
class Env:
    """Marker: the field may be set by `TBG_<PATH>` (an empty variable counts as unset)."""


@dataclass(frozen=True, slots=True)
class Flag:
    """Marker: the field may be set by this `tbg serve` flag (a string, validated like the file's
    value). A flag under `shadow:` belongs to the quick start and also turns replay on."""

    name: str
    metavar: str | None = None


@dataclass(frozen=True, slots=True)
class Knob:
    """A field that has a variable or a flag."""

    path: tuple[str, ...]  # in the file's shape: ("shadow", "sample_rate")
    info: FieldInfo
    env: str | None
    flag: Flag | None

    @property
    def dest(self) -> str:
        """The flag's argparse destination and `Overrides` keyword: the field's own name."""
        return self.path[-1]


def key(name: str, info: FieldInfo) -> str:
    """The field's key in the file (its alias where it has one)."""
    return info.alias or name


def _section(info: FieldInfo) -> type[Section] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _walk(model: type[Section], prefix: tuple[str, ...]) -> Iterator[Knob]:
    for name, info in model.model_fields.items():
        path = (*prefix, key(name, info))
        env = any(isinstance(m, Env) for m in info.metadata)
        flag = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if env or flag:
            yield Knob(path, info, "TBG_" + "_".join(path).upper() if env else None, flag)
        inner = _section(info)
        if inner is not None:  # sections in lists and mappings (upstreams[i]) have no knobs
            yield from _walk(inner, path)


def knobs(root: type[Section]) -> tuple[Knob, ...]:
    found = tuple(_walk(root, ()))
    dests = [k.dest for k in found if k.flag is not None]
    assert len(dests) == len(set(dests)), f"two flags set fields of one name: {dests}"
    return found


def show(value: Any) -> str:
    """A default as `--help` and the docs spell it: 30.0 -> 30, True -> true, None -> null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def default_of(info: FieldInfo) -> Any:
    """The field's default (PydanticUndefined when required)."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def flag_help(knob: Knob) -> str:
    """The flag's help: the field's description, its default and its variable."""
    text = knob.info.description or ""
    default = default_of(knob.info)
    if default is not PydanticUndefined and default is not None:
        text += f" (default {show(default)})"
    if knob.env:
        text += f"; env {knob.env}"
    return text.replace("%", "%%")  # argparse formats help with %


def _set(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    head, *rest = path
    if not rest:
        target[head] = value
        return
    inner = target.get(head)
    inner = dict(inner) if isinstance(inner, Mapping) else {}
    _set(inner, tuple(rest), value)
    target[head] = inner


def merge(
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    flags: Mapping[str, Any],
    table: tuple[Knob, ...],
) -> dict[str, Any]:
    """File < `TBG_*` variables < flags (given ones: not None), in the file's shape."""
    merged = dict(data)
    for knob in table:
        if knob.env and environ.get(knob.env):
            _set(merged, knob.path, environ[knob.env])
    for knob in table:
        if knob.flag is not None and flags.get(knob.dest) is not None:
            _set(merged, knob.path, flags[knob.dest])
    return merged
