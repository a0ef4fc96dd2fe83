"""The spawning pages stay true: the examples of docs/spawning.md and docs/from-spawny.md run.

A ```python block whose opening fence comes right after a line holding only the marker
comment RUNNABLE is run in a fresh namespace (nothing imported: the examples import what
they use), in this process: they spawn real children, and no child may be left running
after a block (warm children included; the fork servers that warm spawns keep for the
life of this process are not counted). Every other python block of the two pages is
compiled, not run (the spawny ones need spawny). The complete C program of spawning.md,
the runnable ```c block, is compiled against this build's libtether and run, when a C
compiler is at hand, and what it prints is compared with the block after it (marked
`<!-- checked: c-program output -->`). Links of both pages are checked, and README.md
must link both.
"""

import faulthandler
import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD_DIR, SOURCE_DIR
from processes import assert_none_left, spawned
from doc_pages import RUNNABLE, blocks, broken_links, fenced_blocks, read_lines, shape

DOCS = os.path.join(SOURCE_DIR, "docs")
SPAWNING_MD = os.path.join(DOCS, "spawning.md")
FROM_SPAWNY_MD = os.path.join(DOCS, "from-spawny.md")
PAGES = [SPAWNING_MD, FROM_SPAWNY_MD]
# A block that hangs fails the whole run after this long instead of stalling it.
BLOCK_TIME_LIMIT = 120


def runnable_blocks():
    return [(path, line, source) for path in PAGES
            for line, marker, source in fenced_blocks(path, "python") if marker == RUNNABLE]


def block_id(path, line):
    return f"{os.path.basename(path)}:{line}"


# ---- processes ----------------------------------------------------------------------------

@pytest.fixture
def no_child_left():
    before = spawned()
    yield
    assert_none_left(before)


# ---- the examples ---------------------------------------------------------------------------

def test_markers_precede_code_blocks():
    for path in PAGES:
        lines = read_lines(path)
        for n, line in enumerate(lines):
            if line.strip() == RUNNABLE:
                assert n + 1 < len(lines) and lines[n + 1].strip() in ("```python", "```c"), (
                    f"{block_id(path, n + 1)}: the runnable marker must come right before a "
                    "```python or ```c fence")


def test_most_examples_are_runnable():
    # A typo in the marker would silently turn every example into an untested one.
    counts = {path: sum(1 for p, _, _ in runnable_blocks() if p == path) for path in PAGES}
    assert counts[SPAWNING_MD] >= 9, counts
    assert counts[FROM_SPAWNY_MD] >= 2, counts


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_every_python_block_compiles(path):
    for line, _marker, source in fenced_blocks(path, "python"):
        compile("\n" * (line - 1) + source, path, "exec")


@pytest.mark.parametrize("path, line, source", runnable_blocks(),
                         ids=[block_id(p, n) for p, n, _ in runnable_blocks()])
def test_runnable_example(no_child_left, path, line, source):
    namespace = {"__name__": f"docs_example_{line}"}
    # Padded so that a traceback names the line of the page.
    code = compile("\n" * (line - 1) + source, os.path.relpath(path, SOURCE_DIR), "exec")
    faulthandler.dump_traceback_later(BLOCK_TIME_LIMIT, exit=True)
    try:
        exec(code, namespace)
    finally:
        faulthandler.cancel_dump_traceback_later()
        namespace.clear()  # the proxies it made go, and their children with them


def c_program():
    programs = [source for _line, marker, source in fenced_blocks(SPAWNING_MD, "c")
                if marker == RUNNABLE]
    assert len(programs) == 1, "spawning.md should hold one complete C program"
    return programs[0]


def test_the_c_program_runs(tmp_path, no_child_left):
    source = c_program()
    cc = shutil.which("cc") or shutil.which("gcc")
    lib = os.path.join(BUILD_DIR, "libtether.so")
    if not cc or not os.path.exists(lib):
        pytest.skip("no C compiler, or no libtether.so in the build")
    (tmp_path / "spawner.c").write_text(source)
    exe = str(tmp_path / "spawner")
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-o", exe, str(tmp_path / "spawner.c"),
                    "-I", os.path.join(SOURCE_DIR, "include"), "-L", BUILD_DIR, "-ltether",
                    f"-Wl,-rpath,{BUILD_DIR}"], check=True)
    # The child finds tether's package in this build, as a host built here does.
    env = dict(os.environ, TETHER_PYTHONPATH=os.path.join(BUILD_DIR, "python"))
    out = subprocess.run([exe], capture_output=True, text=True, timeout=60, env=env,
                         check=True).stdout
    lines = out.splitlines()
    assert "add(2, 3) = 5" in lines, out
    pid = re.search(r"^\[child (\d+)\] ready$", out, re.M)
    assert pid, out
    assert f"client adder, pid {pid[1]}, python " in out, out
    status = re.search(r"^status (-?\d+)$", out, re.M)
    assert status and int(status[1]) in (0, -15), out
    assert f"child {pid[1]} exited: {status[1]}" in lines, out
    # The output the page shows is this one, its pid, status and versions aside (the
    # ready line may come anywhere before status, as the page says).
    (shown,) = [b for b in blocks(SPAWNING_MD) if b.kind == ("checked", "c-program output")]
    assert (sorted(shape(shown.source.replace("-15", "0")))
            == sorted(shape(out.replace("-15", "0")))), f"{shown.where}:\n{shown.source}\n{out}"


# ---- links ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES, ids=os.path.basename)
def test_links_resolve(path):
    broken = broken_links(path)
    assert not broken, f"{os.path.basename(path)}: broken links {broken}"
