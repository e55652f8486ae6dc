"""Finds every documented `python -m experiments.X ...` command and parses it with the binary's own flags.

`documented_commands(root)` reads README.md, docs/*.md and the docstrings of experiments/*.py and configs/*.py
(code blocks and inline code): line continuations are joined, shell comments and anything after `&&`, `;`, `|`
or a redirection are dropped, environment assignments before `python` are ignored.

Run as a program (`python -m tests.commands_lib MODULE`), it reads a JSON list of argument lists on stdin,
imports the binary MODULE (which defines its flags) and parses each list as the binary would, without running
it: every flag must exist and take its value, required flags must be present, a config file must load with its
argument and every `--config.x.y=` override must name a field of it. It prints one JSON result per list.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import json
import os
import re
import shlex
import sys

_CMD = re.compile(r"python -m (experiments\.\w+)")
_STOP = {"&&", ";", "|", "||", ">", ">>", "2>", "2>&1", "&"}


@dataclasses.dataclass(frozen=True)
class Command:
    source: str  # file (and line) it was found in
    module: str  # e.g. experiments.train
    argv: tuple[str, ...]  # the arguments after the module
    text: str


def _docstrings(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return ast.get_docstring(tree, clean=False) or ""


def _snippets(text: str) -> list[tuple[int, str]]:
    """(line number, command text) of every `python -m experiments.` occurrence, continuation lines joined."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        for inline in re.findall(r"`(python -m experiments\.[^`]+)`", line):
            out.append((start + 1, inline))
        stripped = re.sub(r"`[^`]*`", "", line)
        m = _CMD.search(stripped)
        if m:
            out.append((start + 1, stripped[m.start():]))
    return out


def _parse(text: str) -> tuple[str, tuple[str, ...]] | None:
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    if len(tokens) < 3 or tokens[:2] != ["python", "-m"]:
        return None
    argv = []
    for t in tokens[3:]:
        if t in _STOP or t.startswith((">", "2>")):
            break
        argv.append(t)
    return tokens[2], tuple(argv)


def documented_commands(root: str) -> list[Command]:
    sources = [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "*.md")))]
    texts = [(os.path.relpath(p, root), open(p, encoding="utf-8").read()) for p in sources if os.path.exists(p)]
    for folder in ("experiments", "configs"):
        for p in sorted(glob.glob(os.path.join(root, folder, "*.py"))):
            texts.append((os.path.relpath(p, root) + " (docstring)", _docstrings(p)))
    out = []
    for name, text in texts:
        for line_no, snippet in _snippets(text):
            parsed = _parse(snippet)
            if parsed is None:
                out.append(Command(f"{name}:{line_no}", "?", (), snippet))
            else:
                out.append(Command(f"{name}:{line_no}", parsed[0], parsed[1], snippet))
    return out


def _check_one(argv: list[str]) -> str | None:
    from absl import flags

    for a in argv:
        if not a.startswith("--"):
            return f"argument {a!r} is not a --flag (placeholders like '...' are not commands)"
    fv = flags.FLAGS
    fv.unparse_flags()
    for name in [n for n in fv if "." in n]:  # override flags a config flag defined for the previous command
        delattr(fv, name)
    sys.argv = ["prog", *argv]  # ml_collections reads `--config.x=` overrides from sys.argv
    try:
        fv(sys.argv)
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for name in list(fv):
        flag = fv[name]
        if type(flag).__name__ == "_ConfigFlag" and flag.present:
            try:
                value = flag.value
            except Exception as e:  # noqa: BLE001
                return f"--{name}: {type(e).__name__}: {e}"
            if type(value).__name__ == "_ErrorConfig":
                return f"--{name}: the config file does not load"
    return None


def main() -> None:
    module = sys.argv[1]
    argvs = json.load(sys.stdin)
    import importlib

    importlib.import_module(module)
    print(json.dumps([_check_one(list(a)) for a in argvs]))


if __name__ == "__main__":
    main()
