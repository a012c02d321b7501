"""Rewrite imports and `hermes_infra.<module>` references after the stage-package layout.

    python3 tools/rewrite_imports.py [--map tools/module_map.json] [--check] PATH...

PATHs are files or directories (*.py, *.md, *.toml, *.txt, *.cfg, *.ini, *.sh, *.json, *.j2
under them). The map (tools/module_map.json) has "modules" (old dotted module -> new dotted
module) and "names" (old dotted name -> new dotted name, for things that moved out of a
module when it was split). The rewrite is idempotent: a reference already in the new layout is
left alone, so the script can run over a merged branch as often as needed.

In Python files it rewrites, per statement (formatting of untouched lines is kept):
  from hermes_infra import old            -> from hermes_infra.pkg import new as old
  from hermes_infra.old import a, b       -> from hermes_infra.pkg.new import a, b
                                             (split by target when a name moved elsewhere)
  import hermes_infra.old [as x]          -> import hermes_infra.pkg.new [as x]
and everywhere else (strings such as mock targets, comments, docstrings; Markdown, TOML):
  hermes_infra.old[.attr]                 -> hermes_infra.pkg.new[.attr]
  hermes_infra/old.py                     -> hermes_infra/pkg/new.py

Two old modules share their name with a new package (`settings`, `plan`): `from
hermes_infra.settings import X` is the old form unless every X is a module of the new package.
A moved name used as an attribute of a module (`compose.compose_up(...)`) cannot be rewritten
safely by text: those are printed as warnings to fix by hand. `--check` changes nothing and
exits 1 if something would change.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = "hermes_infra"
TEXT_SUFFIXES = {".md", ".toml", ".txt", ".cfg", ".ini", ".sh", ".json", ".j2", ".rst", ".yml", ".yaml"}
DOTTED = re.compile(r"(?<![\w.])hermes_infra(?:\.[A-Za-z_]\w*)+")
SLASHED = re.compile(r"(?<![\w/])hermes_infra((?:/[A-Za-z_]\w*)+)\.py\b")
SKIP_DIRS = {".git", "__pycache__", ".venv", "venv", "node_modules", ".pytest_cache"}


@dataclass(frozen=True)
class Layout:
    modules: dict[str, str]
    names: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Layout:
        data = json.loads(path.read_text())
        return cls(modules=dict(data["modules"]), names=dict(data.get("names", {})))

    @property
    def new_modules(self) -> set[str]:
        """Every new module and every package above one, and every module the package holds now
        (modules added since the layout, such as `settings.providers`, are new ones too)."""
        found = set()
        package = Path(__file__).resolve().parent.parent / "hermes_infra"
        on_disk = [".".join(("hermes_infra", *path.relative_to(package).with_suffix("").parts))
                   for path in package.rglob("*.py") if path.name != "__init__.py"]
        for new in [*self.modules.values(), *on_disk]:
            parts = new.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        return found

    def is_new_only(self, dotted: str) -> bool:
        return dotted in self.new_modules and dotted not in self.modules

    def module(self, name: str) -> str:
        """The new name of module `name` (itself when it did not move)."""
        if self.is_new_only(name):
            return name
        return self.modules.get(name, name)

    def name_target(self, module: str, name: str) -> str | None:
        """Where `module.name` lives now, if it moved out of its module on its own."""
        for old, new in self.modules.items():
            if module in (old, new) and f"{old}.{name}" in self.names:
                return self.names[f"{old}.{name}"]
        return self.names.get(f"{module}.{name}")

    def dotted(self, text: str) -> str:
        """`hermes_infra.a.b.c` rewritten by its longest old prefix (left alone if already new)."""
        parts = text.split(".")
        prefixes = [".".join(parts[:i]) for i in range(len(parts), 1, -1)]
        for prefix in prefixes:
            if prefix in self.names:
                return self.names[prefix] + text[len(prefix):]
            if self.is_new_only(prefix):
                return text
            if prefix in self.modules:
                return self.modules[prefix] + text[len(prefix):]
        return text


def _format_from(indent: str, module: str, names: list[str], comment: str) -> str:
    line = f"{indent}from {module} import {', '.join(names)}{comment}"
    if len(line) <= 110 or len(names) == 1:
        return line
    body = "".join(f"{indent}    {name},\n" for name in names)
    return f"{indent}from {module} import ({comment}\n{body}{indent})"


def _alias(alias: ast.alias) -> tuple[str, str | None]:
    return alias.name, alias.asname


def _spelled(name: str, asname: str | None) -> str:
    return f"{name} as {asname}" if asname and asname != name else name


def _rewrite_from(node: ast.ImportFrom, layout: Layout) -> list[tuple[str, str]] | None:
    """(module, spelled name) pairs for a `from hermes_infra... import` statement, or None if unchanged."""
    module = node.module or ""
    if node.level or not (module == ROOT or module.startswith(ROOT + ".")):
        return None
    out: list[tuple[str, str]] = []
    if module == ROOT:
        for alias in node.names:
            name, asname = _alias(alias)
            old = f"{ROOT}.{name}"
            if old in layout.modules and not layout.is_new_only(old):
                package, _, leaf = layout.modules[old].rpartition(".")
                out.append((package, _spelled(leaf, asname or name)))
            else:
                out.append((ROOT, _spelled(name, asname)))
    else:
        submodules = {f"{module}.{alias.name}" for alias in node.names}
        already_new = module in layout.new_modules and submodules <= layout.new_modules
        target = module if already_new else layout.module(module)
        for alias in node.names:
            name, asname = _alias(alias)
            moved = None if already_new else layout.name_target(module, name)
            if moved:
                home, _, leaf = moved.rpartition(".")
                out.append((home, _spelled(leaf, asname or (name if leaf != name else None))))
            else:
                out.append((target, _spelled(name, asname)))
    original = [(module, _spelled(*_alias(a))) for a in node.names]
    return None if out == original else out


def _rewrite_import(node: ast.Import, layout: Layout) -> list[str] | None:
    out, changed = [], False
    for alias in node.names:
        name, asname = _alias(alias)
        new = layout.module(name) if name.startswith(ROOT + ".") else name
        changed |= new != name
        out.append(_spelled(new, asname))
    return out if changed else None


def _statement_span(lines: list[str], node: ast.stmt) -> tuple[int, int, str, str]:
    """(first line index, last line index, indent, trailing comment) of a statement."""
    first, last = node.lineno - 1, node.end_lineno - 1
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    tail = lines[last][node.end_col_offset:] if first == last else lines[last][node.end_col_offset:]
    comment = tail.rstrip("\n")
    comment = "  " + comment.strip() if comment.strip().startswith("#") else ""
    return first, last, indent, comment


def rewrite_python(text: str, layout: Layout) -> str:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return rewrite_text(text, layout)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    import_lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        first, last, indent, comment = _statement_span(lines, node)
        import_lines.update(range(first, last + 1))
        if isinstance(node, ast.ImportFrom):
            pairs = _rewrite_from(node, layout)
            if pairs is None:
                continue
            grouped: dict[str, list[str]] = {}
            for module, spelled in pairs:
                grouped.setdefault(module, []).append(spelled)
            statements = [_format_from(indent, module, names, comment if i == 0 else "")
                          for i, (module, names) in enumerate(sorted(grouped.items()))]
        else:
            names = _rewrite_import(node, layout)
            if names is None:
                continue
            statements = [f"{indent}import {', '.join(names)}{comment}"]
        ending = "\n" if lines[last].endswith("\n") else ""
        prefix = lines[first][: node.col_offset] if node.col_offset else ""
        if prefix.strip():  # `x = 1; import y`: keep it to the dotted rewrite
            continue
        edits.append((first, last, "\n".join(statements) + ending))
    for first, last, replacement in sorted(edits, reverse=True):
        lines[first:last + 1] = [replacement]
        import_lines.difference_update(range(first, last + 1))
    rebuilt = "".join(lines)
    # Everything else (strings, comments, docstrings) by the dotted/slashed rule, line by line,
    # leaving import statements to the rules above.
    kept_imports = set()
    offset_lines = rebuilt.splitlines(keepends=True)
    try:
        for node in ast.walk(ast.parse(rebuilt)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                kept_imports.update(range(node.lineno - 1, node.end_lineno))
    except SyntaxError:
        pass
    return "".join(line if i in kept_imports else rewrite_text(line, layout) for i, line in enumerate(offset_lines))


def rewrite_text(text: str, layout: Layout) -> str:
    text = DOTTED.sub(lambda m: layout.dotted(m.group(0)), text)

    def slashed(match: re.Match) -> str:
        dotted = ROOT + match.group(1).replace("/", ".")
        new = layout.dotted(dotted)
        return new.replace(".", "/") + ".py" if new != dotted else match.group(0)

    return SLASHED.sub(slashed, text)


def attribute_warnings(path: Path, text: str, layout: Layout) -> list[str]:
    """Uses of a moved name through its old module (`compose.compose_up`), which text cannot fix."""
    warnings = []
    for old_name, new_name in layout.names.items():
        module, _, name = old_name.rpartition(".")
        package, _, home = new_name.rpartition(".")[0].rpartition(".")
        if re.search(rf"^\s*from {re.escape(package)} import [^\n]*\b{re.escape(home)}\b", text, re.MULTILINE):
            continue  # the module it is used through is already its new home
        leaf = module.rpartition(".")[2]
        new_leaf = layout.module(module).rpartition(".")[2]
        for alias in {leaf, new_leaf}:
            for number, line in enumerate(text.splitlines(), 1):
                if re.search(rf"(?<![\w.]){re.escape(alias)}\.{re.escape(name)}\b", line):
                    warnings.append(f"{path}:{number}: {alias}.{name} moved to {new_name}; fix by hand")
    return warnings


def files_under(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and not (SKIP_DIRS & set(p.parts))
                         and (p.suffix == ".py" or p.suffix in TEXT_SUFFIXES) and p.name != "module_map.json")
        elif path.is_file():
            found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--map", type=Path, default=Path(__file__).with_name("module_map.json"))
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    layout = Layout.load(args.map)
    changed = []
    for path in files_under(args.paths):
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        new = rewrite_python(text, layout) if path.suffix == ".py" else rewrite_text(text, layout)
        for warning in attribute_warnings(path, new, layout) if path.suffix == ".py" else []:
            print(f"warning: {warning}", file=sys.stderr)
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new)
    for path in changed:
        print(f"{'would rewrite' if args.check else 'rewrote'} {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
