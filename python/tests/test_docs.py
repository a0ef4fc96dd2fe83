"""The documentation stays true: the examples of the Python pages (docs/python.md,
docs/from-rpyc.md) run against the test host.

A ```python block whose opening fence comes right after a line holding only the marker
comment RUNNABLE is run, each in a fresh namespace with `tether` imported, `host` (also
`conn`) a new connection to the test host (testhost.c), `address` its address, and
$TETHER_ADDRESS naming it, so that tether.connect() without an address reaches it.
Connections a block leaves open are closed after it. Every other python block of the
Python pages is compiled (not run), and their links are checked.
"""

import faulthandler
import os

import pytest

import tether
from tether import _connection

from conftest import SOURCE_DIR
from doc_pages import RUNNABLE, broken_links, fenced_blocks, read_lines

DOCS = os.path.join(SOURCE_DIR, "docs")
PYTHON_MD = os.path.join(DOCS, "python.md")
PAGES = [PYTHON_MD, os.path.join(DOCS, "from-rpyc.md")]
# A block that hangs fails the whole run after this long instead of stalling it.
BLOCK_TIME_LIMIT = 120


def python_blocks(path):
    """Every ```python block of path: (line of its first source line, runnable, source)."""
    return [(line, marker == RUNNABLE, source) for line, marker, source in fenced_blocks(path)]


def runnable_blocks(pages=PAGES):
    """(page, line, source) of every runnable block of pages."""
    return [
        (os.path.basename(page), line, source)
        for page in pages
        for line, runnable, source in python_blocks(page)
        if runnable
    ]


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_markers_precede_python_blocks(path):
    lines = read_lines(path)
    for n, line in enumerate(lines):
        if line.strip() == RUNNABLE:
            assert n + 1 < len(lines) and lines[n + 1].strip() == "```python", (
                f"{os.path.basename(path)}:{n + 1}: the runnable marker must come right "
                "before a ```python fence"
            )


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
    code = compile("\n" * (line - 1) + source, f"docs/{page}", "exec")
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
