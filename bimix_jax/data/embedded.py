"""The embedded corpus: five domains of clearly different character, built offline on any machine.

* `code`: Python source: the interpreter's standard-library `.py` files (tests and site-packages
  excluded) in a seeded order, docstrings removed, cut into ~3k-character documents at blank lines
  before module- or class-level statements.
* `prose`: English technical prose: `pydoc_data.topics` (the language reference) cut at paragraphs,
  then (beyond ~465k characters) the standard library's docstrings of 200+ characters.
* `arithmetic`: generated worked arithmetic: sums, differences, products, divisions with remainder and
  bracketed expressions, each with its correct result, 10-60 per document.
* `records`: generated structured records: CSV tables, JSON lines and key-value blocks of 5-30 rows
  (ids, names, e-mails, dates, cities, items, quantities, amounts, currencies, statuses).
* `markup`: generated HTML pages (headings, paragraphs, lists of links, tables) and XML catalogues.

Every domain draws from its own `random.Random` seeded by (seed, domain), so a domain's documents do not
depend on which other domains are selected. The result is deterministic given the seed and the running
interpreter (`code` and `prose` read its standard library). Code docstrings go to `prose`, never to `code`,
so no text is shared between the two.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import sysconfig
from collections.abc import Callable, Iterator

from bimix_jax.errors import InputError

DOMAINS = ("code", "prose", "arithmetic", "records", "markup")
_DOC_CHARS = 3000  # Target size of a document cut from a longer text (code file, reference topic).
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def _rng(seed: int, domain: str) -> random.Random:
    digest = hashlib.sha256(f"bimix-embedded|{seed}|{domain}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def stdlib_py_files() -> list[str]:
    """The standard library's `.py` files (tests and third-party packages excluded), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(files) if f.endswith(".py"))
    return sorted(out)


def _parse(path: str) -> tuple[str, ast.Module] | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return text, ast.parse(text)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None


def _docstring_nodes(tree: ast.Module) -> Iterator[tuple[ast.AST, ast.Expr]]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                yield node, first


def _strip_docstrings(text: str, tree: ast.Module) -> str:
    """Source without docstrings that sit on lines of their own (a body left empty gets `pass`)."""
    lines = text.splitlines(keepends=True)
    replace: dict[int, tuple[int, str]] = {}  # first line index -> (end line index, replacement)
    for parent, doc in _docstring_nodes(tree):
        start, end = doc.lineno - 1, doc.end_lineno - 1
        indent = lines[start][: doc.col_offset]
        if indent.strip() or lines[end][doc.end_col_offset:].strip():
            continue  # Shares its line with other code: keep it.
        filler = indent + "pass\n" if len(parent.body) == 1 and not isinstance(parent, ast.Module) else ""
        replace[start] = (end, filler)
    out, i = [], 0
    while i < len(lines):
        if i in replace:
            end, filler = replace[i]
            out.append(filler)
            i = end + 1
        else:
            out.append(lines[i])
            i += 1
    return "".join(out)


def _cut(text: str, is_boundary: Callable[[str, str], bool]) -> list[str]:
    """Cuts `text` into documents of about `_DOC_CHARS` characters at lines where `is_boundary(prev, line)`."""
    docs, cur, size, prev = [], [], 0, ""
    for line in text.splitlines(keepends=True):
        if size >= _DOC_CHARS and is_boundary(prev, line):
            docs.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
        prev = line
    docs.append("".join(cur))
    return [d.strip("\n") for d in docs if d.strip()]


def _code_boundary(prev: str, line: str) -> bool:
    """A blank line, then a statement at module or class-body level (indent <= 4)."""
    body = line.lstrip(" ")
    indent = len(line) - len(body)
    return not prev.strip() and bool(body.strip()) and indent <= 4 and not body.startswith((")", "]", "}"))


def _para_boundary(prev: str, line: str) -> bool:
    return not prev.strip() and bool(line.strip())


def _code_docs(rng: random.Random) -> Iterator[str]:
    files = stdlib_py_files()
    if not files:
        raise InputError(
            f"the embedded code domain needs the Python standard-library sources, absent under "
            f"{sysconfig.get_paths()['stdlib']}; use data.source=folder or drop 'code' from data.domains"
        )
    rng.shuffle(files)
    for path in files:
        parsed = _parse(path)
        if parsed is not None:
            yield from _cut(_strip_docstrings(*parsed), _code_boundary)


def _prose_docs(rng: random.Random) -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # Some distributions ship the interpreter without pydoc_data.
        topics = {}
    names = sorted(topics)
    rng.shuffle(names)
    for name in names:
        yield from _cut(topics[name], _para_boundary)
    files = stdlib_py_files()
    rng.shuffle(files)
    for path in files:
        parsed = _parse(path)
        if parsed is None:
            continue
        docs = [ast.get_docstring(parent, clean=True) or "" for parent, _ in _docstring_nodes(parsed[1])]
        text = "\n\n".join(d for d in docs if len(d) >= 200)
        if text:
            yield from _cut(text, _para_boundary)


def _number(rng: random.Random) -> int:
    return rng.randrange(10 ** rng.randint(1, 6))


def _arithmetic_line(rng: random.Random) -> str:
    kind = rng.randrange(6)
    a, b = _number(rng), _number(rng)
    if kind == 0:
        return f"{a} + {b} = {a + b}"
    if kind == 1:
        return f"{a} - {b} = {a - b}"
    if kind == 2:
        a, b = rng.randrange(1000), rng.randrange(1000)
        return f"{a} * {b} = {a * b}"
    if kind == 3:
        b = rng.randrange(1, 100)
        return f"{a} / {b} = {a // b} remainder {a % b}"
    if kind == 4:
        c, d = rng.randrange(100), rng.randrange(1, 50)
        return f"({a} + {b}) * {c} - {d} = {(a + b) * c - d}"
    terms = [rng.randrange(1000) for _ in range(rng.randint(3, 7))]
    return f"{' + '.join(map(str, terms))} = {sum(terms)}"


def _arithmetic_docs(rng: random.Random) -> Iterator[str]:
    while True:
        yield "\n".join(_arithmetic_line(rng) for _ in range(rng.randint(10, 60)))


_FIRST = ("Ada Alan Amara Ben Carla Chen Dana Diego Elena Emil Farah Gita Hana Ivan Jonas Kai Lena Luis Maya Mei "
          "Nadia Noah Omar Priya Rosa Sam Sofia Tariq Uma Vera Wei Yara Zoe").split()
_LAST = ("Abara Berg Costa Dubois Eriksen Fischer Garcia Haddad Ito Jensen Kowalski Larsen Moreau Nakamura Novak "
         "Okafor Petrov Quinn Rossi Silva Tanaka Urban Vargas Weber Xu Yilmaz Zhang").split()
_CITIES = ("Lisbon Oslo Nairobi Osaka Lima Toronto Krakow Seoul Austin Dublin Accra Porto Quito Hanoi Perth "
           "Bergen Tunis Leeds Cusco Malmo").split()
_ITEMS = ("widget gasket bracket valve sensor cable hinge filter bearing spring nozzle clamp relay socket "
          "panel pump switch gear lens motor").split()
_STATUS = ("paid", "pending", "refunded", "shipped", "cancelled")
_CURRENCIES = ("EUR", "USD", "JPY", "GBP", "NOK")


def _record(rng: random.Random) -> dict:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "id": rng.randrange(10_000, 1_000_000),
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}@example.{rng.choice(('com', 'org', 'net'))}",
        "date": f"{rng.randint(1990, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "city": rng.choice(_CITIES),
        "item": rng.choice(_ITEMS),
        "quantity": rng.randint(1, 500),
        "amount": f"{rng.randrange(100, 10_000_000) / 100:.2f}",
        "currency": rng.choice(_CURRENCIES),
        "status": rng.choice(_STATUS),
    }


def _records_docs(rng: random.Random) -> Iterator[str]:
    while True:
        rows = [_record(rng) for _ in range(rng.randint(5, 30))]
        fields = list(rows[0])
        fields = [f for f in fields if f == "id" or rng.random() < 0.8]
        kind = rng.randrange(3)
        if kind == 0:
            lines = [",".join(fields)] + [",".join(str(r[f]) for f in fields) for r in rows]
        elif kind == 1:
            lines = ["{" + ", ".join(f'"{f}": ' + (str(r[f]) if f in ("id", "quantity") else f'"{r[f]}"')
                                     for f in fields) + "}" for r in rows]
        else:
            lines = ["\n".join(f"{f}: {r[f]}" for f in fields) + "\n---" for r in rows]
        yield "\n".join(lines)


_WORDS = ("about account active archive area article band basic board book border button card center chart "
          "class clear close color column comment contact content count data date default detail display "
          "document download edit entry event field file filter footer form frame group guide header help "
          "home image index info item label layout level link list local main media menu message mode "
          "module name news note number option order output page panel photo post price print profile "
          "project record report result review search section select service setting share size source "
          "status store style summary table tag team text title tool topic update user value version view").split()


def _phrase(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _html(rng: random.Random) -> str:
    title = _phrase(rng, 2, 5).title()
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", f"  <title>{title}</title>",
           '  <meta charset="utf-8">', "</head>", "<body>", f"  <h1>{title}</h1>"]
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(3)
        cls = rng.choice(_WORDS)
        if kind == 0:
            out.append(f'  <div class="{cls}">')
            out += [f"    <p>{_phrase(rng, 5, 15).capitalize()}.</p>" for _ in range(rng.randint(1, 3))]
            out.append("  </div>")
        elif kind == 1:
            out.append(f'  <ul class="{cls}">')
            for _ in range(rng.randint(2, 6)):
                a, b = rng.choice(_WORDS), rng.choice(_WORDS)
                out.append(f'    <li><a href="/{a}/{b}.html">{_phrase(rng, 1, 3)}</a></li>')
            out.append("  </ul>")
        else:
            cols = [rng.choice(_WORDS) for _ in range(rng.randint(2, 4))]
            out += [f'  <table id="{cls}">', "    <tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
            for _ in range(rng.randint(2, 5)):
                out.append("    <tr>" + "".join(f"<td>{rng.randrange(1000)}</td>" for _ in cols) + "</tr>")
            out.append("  </table>")
    return "\n".join(out + ["</body>", "</html>"])


def _xml(rng: random.Random) -> str:
    root, item = rng.choice(_WORDS), rng.choice(_WORDS)
    out = ['<?xml version="1.0" encoding="UTF-8"?>', f"<{root}s>"]
    for _ in range(rng.randint(2, 6)):
        ident, version = f"{item[:2]}{rng.randrange(100, 999)}", f"{rng.randint(1, 9)}.{rng.randint(0, 9)}"
        out.append(f'  <{item} id="{ident}" version="{version}">')
        for _ in range(rng.randint(2, 4)):
            tag = rng.choice(_WORDS)
            out.append(f"    <{tag}>{_phrase(rng, 1, 4)}</{tag}>")
        out.append(f"  </{item}>")
    return "\n".join(out + [f"</{root}s>"])


def _markup_docs(rng: random.Random) -> Iterator[str]:
    while True:
        yield _html(rng) if rng.random() < 0.6 else _xml(rng)


_GENERATORS: dict[str, Callable[[random.Random], Iterator[str]]] = {
    "code": _code_docs, "prose": _prose_docs, "arithmetic": _arithmetic_docs,
    "records": _records_docs, "markup": _markup_docs,
}


def embedded_documents(domain: str, *, seed: int, chars: int, max_docs: int = 0) -> list[str]:
    """Documents of one embedded domain: about `chars` characters, at most `max_docs` documents (0 = no cap)."""
    if domain not in _GENERATORS:
        raise InputError(f"data.domains: {domain!r} is not an embedded domain; choose from {', '.join(DOMAINS)}")
    if chars <= 0:
        raise InputError(f"data.embedded_chars_per_domain={chars} leaves the embedded domains empty; set it > 0")
    docs, total = [], 0
    for doc in _GENERATORS[domain](_rng(seed, domain)):
        if total >= chars or (max_docs and len(docs) >= max_docs):
            break
        docs.append(doc)
        total += len(doc)
    return docs
