"""Every documented command names a real binary and only flags and config fields it accepts (parsed, not run);
every binary's --help is readable and its examples are accepted."""

import collections
import json
import os
import re
import subprocess
import sys

import pytest

from tests import commands_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments"))
                  if f.endswith(".py") and f not in ("__init__.py", "cli.py", "baselines.py")
                  and not f.endswith("_lib.py"))
MIN_COMMANDS = 60  # the docs hold more; a drop below this means commands went missing from the docs


def _env():
    return {**os.environ, "PYTHONPATH": REPO, "BIMIX_JAX_CACHE_DIR": "", "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def commands():
    return commands_lib.documented_commands(REPO)


def test_every_documented_command_parses(commands):
    assert len(commands) >= MIN_COMMANDS, f"only {len(commands)} documented commands found"
    bad = [f"{c.source}: {c.text!r} does not name a binary" for c in commands
           if not c.module.startswith("experiments.") or c.module.split(".", 1)[1] not in BINARIES]
    by_module = collections.defaultdict(list)
    for c in commands:
        if c.module.startswith("experiments.") and c.module.split(".", 1)[1] in BINARIES:
            by_module[c.module].append(c)
    for module, cmds in sorted(by_module.items()):
        proc = subprocess.run([sys.executable, "-m", "tests.commands_lib", module], cwd=REPO, env=_env(),
                              input=json.dumps([list(c.argv) for c in cmds]), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        for c, err in zip(cmds, json.loads(proc.stdout.strip().splitlines()[-1])):
            if err:
                bad.append(f"{c.source}: {c.text.strip()!r}: {err}")
    print(f"{len(commands)} documented commands over {len(by_module)} binaries parsed")
    assert not bad, "\n".join(bad)


def test_every_binary_is_documented(commands):
    named = {c.module.split(".", 1)[-1] for c in commands if not c.source.endswith("(docstring)")
             and not c.source.startswith(("experiments", "configs"))}
    missing = [b for b in BINARIES if b not in named]
    assert not missing, f"binaries with no command in README.md or docs/: {missing}"


@pytest.mark.parametrize("binary", BINARIES)
def test_help_is_readable(binary):
    proc = subprocess.run([sys.executable, "-m", f"experiments.{binary}", "--help"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    text = proc.stdout
    doc = commands_lib._docstrings(os.path.join(REPO, "experiments", f"{binary}.py"))
    assert doc.strip().splitlines()[0] in text
    usage = text[: text.find("flags:")] if "flags:" in text else text
    for line in usage.splitlines():
        assert len(line) <= 120, f"--help line of {len(line)} characters: {line[:80]!r}..."
        assert len(re.findall(r"python -m experiments\.", line)) <= 1, f"two commands run on in one line: {line!r}"
    # Every example of the docstring is a command (checked by the test above), one per line.
    examples = [c for c in commands_lib.documented_commands(REPO)
                if c.source.startswith(f"experiments/{binary}.py")]
    assert examples, f"experiments/{binary}.py has no example command in its docstring"
