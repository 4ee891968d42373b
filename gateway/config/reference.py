"""docs/configuration.md, written from the settings model itself.

The reference is generated rather than written so that it cannot drift from
the code: a setting's name, environment variable, type, default and
description are read from the field that declares it, grouped by the concern
module (sections/) that declares it, in the order the settings model lists
them. A test compares the checked-in page with what this writes.

    .venv/bin/python -m fognode.gateway.config.reference > docs/configuration.md

Defaults that depend on the machine are shown as what they mean: paths under
the data directory are computed with a stand-in data directory and printed as
``<data dir>/...``, so the page is the same on every machine.
"""

from __future__ import annotations

import enum
import os
import sys
import tempfile
import types
import typing
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AliasChoices, AnyHttpUrl, BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .settings import Settings

REGENERATE = ".venv/bin/python -m fognode.gateway.config.reference > docs/configuration.md"
ENV_PREFIX = "FOGNODE_"
DATA_DIR = "<data dir>"

_HEADER = f"""\
# Configuration reference

<!-- Generated from the settings model (gateway/config/sections/) by
     `{REGENERATE}`.
     Do not edit by hand: change a field's description and regenerate. -->

Every setting can be given, highest priority first, as a flag of `fognode serve`
(the common ones), as an environment variable `FOGNODE_<NAME>`, or as a key of a
TOML file named by `--config FILE` or `FOGNODE_CONFIG` (at the top level or under
a `[fognode]` table; unknown keys are an error, so a typo does not go unnoticed);
otherwise its default applies. `fognode config` prints the settings the node would
run with, secrets masked.

```toml
[fognode]
host = "*"
upstream_url = "http://127.0.0.1:11434"
first_byte_timeout = 1800
log_format = "json"
```

Lists are comma-separated (or a JSON list); tables (`dict`) are JSON objects.
`{DATA_DIR}` is `$XDG_DATA_HOME/fognode`, by default `~/.local/share/fognode`: where
`./setup.sh` puts the node's certificates, keys and records.

There is deliberately no total request timeout: a long answer on a slow CPU is
normal, a silent upstream is not (see `first_byte_timeout` and `idle_timeout`).
"""


def sections() -> list[type[BaseModel]]:
    """The concern classes Settings is assembled from, in the order it lists them."""
    return [
        base
        for base in reversed(Settings.__bases__)
        if issubclass(base, BaseModel) and base.__module__.startswith(_sections_package())
    ]


def _sections_package() -> str:
    # Not __name__: run with -m, this module is __main__.
    return Settings.__module__.rsplit(".", 1)[0] + ".sections."


def own_fields(section: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """The fields a concern class declares, in declaration order, as Settings has them."""
    for name in section.model_fields:
        yield name, Settings.model_fields[name]


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set a field: FOGNODE_<NAME>, then any other alias."""
    names = [ENV_PREFIX + name.upper()]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        for choice in alias.choices:
            # Lower-case choices are the field's own name (for TOML and overrides).
            if isinstance(choice, str) and choice.isupper() and choice not in names:
                names.append(choice)
    return names


def type_text(annotation: Any) -> str:
    """A field's type as an operator writes it."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return " or ".join(type_text(a) for a in present)
    if origin is typing.Literal:
        return " | ".join(f"`{v}`" for v in args)
    if origin is list:
        return "list"
    if origin is dict:
        return "table (JSON)"
    simple: dict[Any, str] = {
        bool: "bool",
        int: "int",
        float: "number",
        str: "text",
        Path: "path",
        SecretStr: "secret text",
        AnyHttpUrl: "URL",
        time: "HH:MM",
    }
    return simple.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds_text(field: FieldInfo) -> str:
    """The field's numeric bounds (ge, gt, le, lt), as the validation enforces them."""
    parts = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            parts.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            parts.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            parts.append(f"< {item.lt}")
    return ", ".join(parts)


def default_value(field: FieldInfo, data_home: Path) -> Any:
    """The default as the settings would take it, the data directory standing in."""
    if field.default_factory is not None:
        previous = os.environ.get("XDG_DATA_HOME")
        os.environ["XDG_DATA_HOME"] = str(data_home)
        try:
            return field.default_factory()  # type: ignore[call-arg]
        finally:
            if previous is None:
                del os.environ["XDG_DATA_HOME"]
            else:
                os.environ["XDG_DATA_HOME"] = previous
    return None if field.default is PydanticUndefined else field.default


def default_text(field: FieldInfo, data_home: Path) -> str:
    value = default_value(field, data_home)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, time):
        return f"`{value.strftime('%H:%M')}`"
    if isinstance(value, list | dict) and not value:
        return "empty" if isinstance(value, list) else "`{}`"
    text = str(value)
    home = str(data_home / "fognode")
    if text.startswith(home):
        text = DATA_DIR + text[len(home) :]
    if isinstance(value, str | AnyHttpUrl):
        text = text.rstrip("/") if isinstance(value, AnyHttpUrl) else text
    return f"`{text}`"


def _cell(text: str) -> str:
    """Markdown table cell text: one line, pipes escaped, no stray HTML.

    Outside code spans a placeholder such as <hostname> would be read as an
    HTML tag and vanish from the rendered page, so '<' is escaped there.
    """
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;")
    return "`".join(parts)


def missing_descriptions() -> list[str]:
    """Settings that an operator would find undocumented (the test checks there are none)."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if not (field.description or "").strip()
    ]


def render() -> str:
    """The whole page."""
    out = [_HEADER]
    with tempfile.TemporaryDirectory(prefix="fognode-reference-") as tmp:
        data_home = Path(tmp)
        groups = [(section, list(own_fields(section))) for section in sections()]
        out.append("## Contents\n")
        for section, _ in groups:
            title = _title(section)
            out.append(f"- [{title}](#{anchor(title)})")
        out.append("")
        for section, fields in groups:
            module = section.__module__.rsplit(".", 1)[-1]
            out.append(f"## {_title(section)}\n")
            out.append(f"{_summary(section)} Declared in `gateway/config/sections/{module}.py`.\n")
            out.append("| Setting | Type | Default | Description |")
            out.append("|---|---|---|---|")
            for name, field in fields:
                env = "<br>".join(f"`{n}`" for n in env_names(name, field))
                kind = type_text(field.annotation)
                bounds = bounds_text(field)
                if bounds:
                    kind = f"{kind}, {bounds}"
                out.append(
                    f"| {env} | {_cell(kind)} | {_cell(default_text(field, data_home))} "
                    f"| {_cell(field.description or '')} |"
                )
            out.append("")
    return "\n".join(out)


def _title(section: type[BaseModel]) -> str:
    """The concern's name: its docstring's words before the colon."""
    return _docline(section).split(":", 1)[0]


def _summary(section: type[BaseModel]) -> str:
    """What the concern covers: its docstring's words after the colon, as a sentence."""
    rest = _docline(section).split(":", 1)[-1].strip()
    return rest[:1].upper() + rest[1:]


def _docline(section: type[BaseModel]) -> str:
    return (section.__doc__ or section.__name__).strip().splitlines()[0]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'.

    Letters and digits of any script, '-' and '_' stay; everything else
    (backticks, dots, slashes, parentheses) goes. Repeated headings get
    '-1', '-2', ... from the caller, which sees the whole page.
    """
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
