"""The documentation stays true: every fenced block of every page (README.md,
python/README.md, docs/*.md) is accounted for by its marker (see doc_pages.py), and the
examples of the Python pages (docs/python.md, docs/from-rpyc.md, python/README.md) run
against the test host.

A ```python block whose opening fence comes right after a line holding only the marker
comment RUNNABLE is run, each in a fresh namespace with `tether` imported, `host` (also
`conn`) a new connection to the test host (testhost.c), `address` its address, and
$TETHER_ADDRESS naming it, so that tether.connect() without an address reaches it.
Connections a block leaves open are closed after it. Every python block marked compiled,
on any page, is compiled (not run). Each other marker is kept by the test named in
RUNNERS below; a block without a marker, or with one no test keeps, fails here.
"""

import ast
import faulthandler
import inspect
import os
import re
import subprocess
import sys

import pytest

import tether
from tether import _connection

from conftest import SOURCE_DIR
from doc_pages import (RUNNABLE, blocks, broken_links, fenced_blocks, pages, read_lines,
                       same_shape)

DOCS = os.path.join(SOURCE_DIR, "docs")
PYTHON_MD = os.path.join(DOCS, "python.md")
PYTHON_README = os.path.join(SOURCE_DIR, "python", "README.md")
PAGES = [PYTHON_MD, os.path.join(DOCS, "from-rpyc.md"), PYTHON_README]
ALL_PAGES = pages(SOURCE_DIR)
SPAWN_PAGES = [os.path.join(DOCS, "spawning.md"), os.path.join(DOCS, "from-spawny.md")]

# The comparisons of `<!-- checked: CHECK -->` blocks, and the test that makes each.
CHECKS = {
    "bytes": "test_docs_protocol.py",
    "session": "test_docs_demo.py",
    "eval_exec": "test_docs_demo.py",
    "hello_client output": "test_docs_demo.py",
    "demo log": "test_docs_demo.py",
    "task exception": "test_docs_demo.py",
    "line server stopped": "test_docs_demo.py",
    "actor coroutines": "test_docs_demo.py",
    "actor coroutines output": "test_docs_demo.py",
    "layout": "test_docs.py",
    "signature": "test_docs.py",
    "version": "test_docs.py",
    "c-program output": "test_spawn_docs.py",
    "host file": "test_cli.py",
}
# Where the blocks of the settings of `<!-- runnable: ENV -->` run.
SETTINGS = {"installed": "test_docs_code.py", "demo": "test_docs_demo.py",
            "wheel": "tests/test-wheel.sh"}
# The verbatim copies of files, compared by this test.
COPIES = "tests/test-examples.sh"


def runner(block):
    """The test that keeps the promise of block's marker, or None if none does."""
    kind, arg = block.kind
    if kind == "not run":
        return "nobody (not run)"
    if kind == "BEGIN":
        return COPIES if os.path.exists(os.path.join(SOURCE_DIR, arg)) else None
    if kind == "checked":
        return CHECKS.get(arg)
    if kind == "compiled":
        if block.language == "python" and not arg:
            return "test_docs.py"
        if block.language in ("c", "cpp") and arg in ("", "glib", "qt"):
            return "test_docs_code.py"
        return None
    if kind == "runnable" and not arg:
        if block.language == "python" and block.path in PAGES:
            return "test_docs.py"
        if block.language in ("python", "c") and block.path in SPAWN_PAGES:
            return "test_spawn_docs.py"
        return None
    if kind == "runnable" and block.language in ("python", "sh"):
        return SETTINGS.get(arg.split()[0])
    return None


@pytest.mark.parametrize("path", ALL_PAGES, ids=lambda p: os.path.relpath(p, SOURCE_DIR))
def test_every_block_is_accounted_for(path):
    unaccounted = [f"{b.where} ({b.language or 'plain'} block after {b.marker!r})"
                   for b in blocks(path) if runner(b) is None]
    assert not unaccounted, (
        "blocks without a marker that a test keeps (see python/tests/doc_pages.py): "
        + "; ".join(unaccounted))


def test_the_blocks_not_run_are_few():
    # Each needs a reason, and their number stays small: a new one is a deliberate choice.
    not_run = [b for path in ALL_PAGES for b in blocks(path) if b.kind[0] == "not run"]
    assert len(not_run) <= 5, [f"{b.where}: {b.kind[1]}" for b in not_run]


def test_markers_are_followed_by_fences():
    # A marker that lost its block (an edit moved the fence) would account for nothing.
    for path in ALL_PAGES:
        lines = read_lines(path)
        for n, line in enumerate(lines):
            if line.strip().startswith(("<!-- runnable", "<!-- compiled", "<!-- checked",
                                        "<!-- not run")):
                assert n + 1 < len(lines) and lines[n + 1].strip().startswith("```"), (
                    f"{os.path.relpath(path, SOURCE_DIR)}:{n + 1}: a marker without a fence "
                    "after it")


@pytest.mark.parametrize("path", ALL_PAGES, ids=lambda p: os.path.relpath(p, SOURCE_DIR))
def test_compiled_python_blocks_compile(path):
    for b in blocks(path):
        if b.language == "python" and b.kind[0] == "compiled":
            compile("\n" * (b.line - 1) + b.source, path, "exec")
# A block that hangs fails the whole run after this long instead of stalling it.
BLOCK_TIME_LIMIT = 120


def python_blocks(path):
    """Every ```python block of path: (line of its first source line, runnable, source)."""
    return [(line, marker == RUNNABLE, source) for line, marker, source in fenced_blocks(path)]


def runnable_blocks(pages=PAGES):
    """(page, line, source) of every runnable block of pages."""
    return [
        (os.path.relpath(page, SOURCE_DIR), line, source)
        for page in pages
        for line, runnable, source in python_blocks(page)
        if runnable
    ]


def test_most_examples_are_runnable():
    # A typo in the marker would silently turn every example into an untested one.
    assert len(runnable_blocks([PYTHON_MD])) >= 15


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_every_python_block_compiles(path):
    for line, _runnable, source in python_blocks(path):
        compile("\n" * (line - 1) + source, path, "exec")


@pytest.mark.parametrize(
    "page, line, source", runnable_blocks(), ids=[f"{p}:{n}" for p, n, _ in runnable_blocks()]
)
def test_runnable_example(host, monkeypatch, page, line, source):
    if "import numpy" in source and tether.protocol_version < 2:
        # The buffer examples (numpy arrays through shared memory): the portable build has
        # no shared memory, and its arrays arrive as bytes.
        pytest.skip("no shared memory in this build")
    monkeypatch.setenv("TETHER_ADDRESS", host.address)
    conn = host.connect(name=f"docs-{line}")
    namespace = {
        "__name__": "docs_example",
        "tether": tether,
        "host": conn,
        "conn": conn,
        "address": host.address,
    }
    # Padded so that a traceback names the line of the page.
    code = compile("\n" * (line - 1) + source, page, "exec")
    opened_before = set(_connection._open)
    faulthandler.dump_traceback_later(BLOCK_TIME_LIMIT, exit=True)
    try:
        exec(code, namespace)
    finally:
        faulthandler.cancel_dump_traceback_later()
        for c in set(_connection._open) - opened_before:
            c.close()
        conn.close()


# ---- links -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_links_resolve(path):
    broken = broken_links(path)
    assert not broken, f"{os.path.basename(path)}: broken links {broken}"


def test_the_readmes_link_the_python_pages():
    for readme, prefix in (("README.md", "docs/"), ("python/README.md", "../docs/")):
        with open(os.path.join(SOURCE_DIR, readme), encoding="utf-8") as f:
            text = f.read()
        for page in ("python.md", "from-rpyc.md"):
            assert f"]({prefix}{page})" in text, f"{readme} does not link {prefix}{page}"


# ---- checked blocks: text compared with what the code really has -------------------------


def checked_blocks(check, paths=ALL_PAGES):
    return [b for path in paths for b in blocks(path) if b.kind == ("checked", check)]


def test_the_layout_lists_what_the_repository_holds():
    (block,) = checked_blocks("layout")
    listed = [line.split()[0] for line in block.source.splitlines() if line.strip()]
    for entry in listed:
        assert os.path.exists(os.path.join(SOURCE_DIR, entry)), f"{block.where}: no {entry}"
    # Every directory of the checkout is listed (hidden ones and the build's aside).
    dirs = {e.name + "/" for e in os.scandir(SOURCE_DIR) if e.is_dir()
            and not e.name.startswith(".") and not e.name.startswith("build")}
    tracked = subprocess.run(["git", "-C", SOURCE_DIR, "ls-files"], capture_output=True,
                             text=True)
    if tracked.returncode == 0:  # a checkout: untracked directories (a venv) do not count
        dirs &= {f.split("/")[0] + "/" for f in tracked.stdout.splitlines() if "/" in f}
    covered = {entry.split("/")[0] + "/" for entry in listed}  # include/tether.h: include/
    assert sorted(dirs - covered) == [], f"{block.where}: directories not listed"


def test_the_signature_of_connect_is_the_real_one():
    (block,) = checked_blocks("signature")
    name, _, params = block.source.strip().partition("(")
    assert name == "tether.connect", block.where
    documented = ast.parse(f"def f({params}: pass").body[0].args
    real = inspect.signature(tether.connect).parameters
    positional = [(a.arg, ast.literal_eval(d)) for a, d in zip(
        documented.args, [None] * (len(documented.args) - len(documented.defaults))
        + documented.defaults)]
    keyword = [(a.arg, ast.literal_eval(d) if d is not None else inspect.Parameter.empty)
               for a, d in zip(documented.kwonlyargs, documented.kw_defaults)]
    assert positional == [(p.name, p.default) for p in real.values()
                          if p.kind == p.POSITIONAL_OR_KEYWORD], block.where
    assert keyword == [(p.name, p.default) for p in real.values()
                       if p.kind == p.KEYWORD_ONLY], block.where


def test_the_versions_printed_are_as_shown():
    (block,) = checked_blocks("version")
    out = subprocess.run([sys.executable, "-m", "tether", "--version"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert same_shape(block.source, out), f"{block.where}:\n{block.source}\nbut:\n{out}"
    assert f"tether {tether.__version__}\n" in out



def test_a_block_without_a_known_marker_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```sh\nls\n```\n\n<!-- runable -->\n```python\npass\n```\n\n"
                    "<!-- checked -->\n```\nout\n```\n\n<!-- not run: a diagram -->\n```\n"
                    "+--+\n```\n\n<!-- compiled: rust -->\n  ```c\nint x;\n  ```\n")
    found = blocks(str(page))
    assert [runner(b) for b in found] == [None, None, None, "nobody (not run)", None]
    assert [b.language for b in found] == ["sh", "python", "", "", "c"]


def test_benchmarks_page_shows_the_committed_instruction_counts():
    import json
    with open(os.path.join(SOURCE_DIR, "bench", "out", "instructions.json")) as f:
        counts = json.load(f)["instructions_per_call"]
    with open(os.path.join(DOCS, "benchmarks.md")) as f:
        page = f.read()
    for path, label in (("c_sync", "C to C"), ("python_sync", "Python to C"),
                        ("python_proxy", "Python to Python")):
        row = next((line for line in page.splitlines() if line.startswith(f"| {label}")), "")
        cells = [cell.strip() for cell in row.split("|")[2:4]]
        assert cells == [f"{counts[path + '_client']:,}", f"{counts[path + '_server']:,}"], \
            f"docs/benchmarks.md says {cells} for {path}: bench/out/instructions.json has others"
