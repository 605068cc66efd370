"""What the repository promises about itself: no path of a developer's machine in any tracked
file, the README's test command is the one CI runs, bench/README.md's tables match the results."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a work tree, a home or root folder, a temporary folder, a virtual environment's folder
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|private/var)/[\w.-]+|[\w.-]*venvs?/[\w.-]+/bin/")


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.splitlines() if os.path.isfile(os.path.join(ROOT, f))]


def test_no_machine_paths_in_tracked_files():
    found = []
    for name in tracked_files():
        if name == "tests/test_repo_hygiene.py":
            continue
        try:
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{name}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert not found, "machine-specific paths: " + "; ".join(found[:20])


def test_the_pattern_catches_machine_paths():
    # built from parts so that this file itself names no machine path
    for root, rest in (("work", "main/runs"), ("tmp", "abc/x.json"), ("root", ".cache"), ("home", "me/x")):
        bad = "/" + "/".join((root, rest))
        assert MACHINE_PATH.search(bad), bad
    assert MACHINE_PATH.search("cli/" + "venvs/x/bin/python")
    for fine in ("bench/results/x.json", "runs/digits/best.safetensors", "docs/notes.md"):
        assert not MACHINE_PATH.search(fine), fine


def test_readme_test_command_is_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    command = "TRITON_INTERPRET=1 NHL_REQUIRE_EXT=1 python -m pytest -q"
    assert command in readme
    assert any(line.strip() == command for line in ci.splitlines())


def test_bench_readme_tables_match_the_results():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "make_tables.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
