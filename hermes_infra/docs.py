"""The README's reference sections, generated from the settings models (and the controls),
so the documentation cannot drift from the code. `python -m hermes_infra.docs` rewrites them."""
from __future__ import annotations

import json
import re
import sys
import typing
from pathlib import Path

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from hermes_infra.settings.schema import HostSettings

README = Path(__file__).resolve().parent.parent / "README.md"


def _model_of(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in typing.get_args(candidate):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "*required*"
    value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "one gateway named `hermes`"
    if isinstance(value, SecretStr) or value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation)
    text = re.sub(r"typing\.|pydantic\.types\.|hermes_infra\.settings\.schema\.", "", text)
    text = text.replace("NoneType", "None").replace("<class '", "").replace("'>", "")
    return text.replace("|", "or")


def _section(model: type[BaseModel], path: str, out: list[str], seen: set) -> None:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {description} |")
        sub = _model_of(field.annotation)
        if sub is not None and sub not in seen:
            is_list = typing.get_origin(field.annotation) is list
            nested.append((sub, f"{path}.{name}[]" if is_list else f"{path}.{name}" if path else name))
    title = path or "top level (one pyinfra data variable per row)"
    out.append(f"### `{title}`\n")
    doc = " ".join((model.__doc__ or "").split())
    if doc:
        out.append(doc + "\n")
    out.append("| setting | type | default | meaning |\n|---|---|---|---|")
    out.extend(rows)
    out.append("")
    for sub, sub_path in nested:
        seen.add(sub)
        _section(sub, sub_path, out, seen)


def settings_markdown() -> str:
    out: list[str] = []
    _section(HostSettings, "", out, {HostSettings})
    return "\n".join(out).rstrip() + "\n"


def controls_markdown() -> str:
    try:
        from hermes_infra.checks import controls_markdown as render
    except ImportError:
        return "(the compliance checks are not installed)\n"
    return render()


SECTIONS = {"settings-reference": settings_markdown, "controls-reference": controls_markdown}


def render_readme(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), text)
    return text


def main() -> int:
    text = README.read_text()
    updated = render_readme(text)
    if "--check" in sys.argv:
        if updated != text:
            print("README.md reference sections are out of date: run `python -m hermes_infra.docs`")
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
