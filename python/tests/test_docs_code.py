"""The C and C++ of the docs compiles, and the build commands they show work.

Every ```c and ```cpp block marked `<!-- compiled -->` (see doc_pages.py) is compiled with
-Wall -Werror against include/tether.h (and tether.hpp), inside a harness that supplies
what a fragment assumes (doc_fragments.h): a fragment's top-level definitions (the chunks,
between blank lines, that start with `static`, and in C++ `struct` or `template`) go at
file scope, the rest of it into the body of a function whose parameters are the variables fragments use as given (`host`, `conn`,
`req`, ...). Warnings about unused things are off: a fragment shows a definition or a
call without the code around it that would use it. `compiled: glib` adds GLib's headers,
`compiled: qt` compiles C++ with Qt's, with g++; a harness whose headers are missing
skips. A fragment is compiled, not linked (it is not a program).

Every ```sh block marked `<!-- runnable: installed -->` runs against a copy of this build
installed into a staging directory (DESTDIR=... cmake --install: what `make install`
puts in place, moved under a directory), with pkg-config finding it there
(PKG_CONFIG_SYSROOT_DIR), CMake's find_package too (CMAKE_PREFIX_PATH), and
examples/minimal_host.c and minimal_host.cpp as the `host.c` and `host.cpp` the block
builds; the program built (`host`, or `build/host`) must run.
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD_DIR, SOURCE_DIR, private_runtime_dir
from doc_pages import blocks, pages

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_PAGES = pages(SOURCE_DIR)


def code_blocks(kind, arg=None, languages=("c", "cpp")):
    return [b for path in ALL_PAGES for b in blocks(path)
            if b.kind[0] == kind and (arg is None or b.kind[1] == arg)
            and b.language in languages]


def block_ids(found):
    return [b.where for b in found]


def chunks(source):
    """source cut at the blank lines outside braces and parentheses: (first line, text)."""
    found, current, depth, start = [], [], 0, 0
    for n, line in enumerate(source.splitlines()):
        if not line.strip() and depth == 0:
            if current:
                found.append((start, "\n".join(current)))
            current = []
            continue
        if not current:
            start = n
        current.append(line)
        code = re.sub(r'"(\\.|[^"\\])*"|//.*|/\*.*?\*/', "", line)
        depth += code.count("{") + code.count("(") - code.count("}") - code.count(")")
    if current:
        found.append((start, "\n".join(current)))
    return found


def at_file_scope(chunk, cpp=False):
    code = re.sub(r"/\*.*?\*/", "", chunk, flags=re.S).lstrip()
    # C++ fragments (cpp-guide.md) also define types and specializations.
    return code.startswith(("static ", "struct ", "template ") if cpp else "static ")


def harness(block):
    """The translation unit that compiles block: definitions at file scope, statements in
    a function; #line directives make the compiler name the page's lines."""
    page = os.path.relpath(block.path, SOURCE_DIR)
    top, body = [], []
    for start, text in chunks(block.source):
        part = f'#line {block.line + start} "{page}"\n{text}\n'
        (top if at_file_scope(text, block.language == "cpp") else body).append(part)
    return "".join([
        '#include "doc_fragments.h"\n',
        *top,
        "void doc_fragment(DOC_FRAGMENT_ASSUMES);\n",
        "void\ndoc_fragment(DOC_FRAGMENT_ASSUMES)\n{\n{\n",  # the fragment's own scope
        *body,
        "}\n}\n",
    ])


def compiler_for(block):
    """(argv without the source, suffix) for block, or a reason to skip."""
    flags = ["-Wall", "-Werror", "-Wno-unused-function", "-Wno-unused-variable",
             "-Wno-unused-but-set-variable", "-I", os.path.join(SOURCE_DIR, "include"),
             "-I", HERE, "-c", "-o", os.devnull]
    arg = block.kind[1]
    if block.language == "cpp":
        cxx = shutil.which("g++")
        if not cxx:
            return "no g++"
        argv = [cxx, "-std=c++17", "-fPIC", *flags]
    else:
        cc = shutil.which("cc") or shutil.which("gcc")
        if not cc:
            return "no C compiler"
        argv = [cc, "-std=c11", *flags]
    if arg in ("glib", "qt"):
        package = {"glib": "glib-2.0", "qt": "Qt5Core"}[arg]
        got = subprocess.run(["pkg-config", "--cflags", package], capture_output=True,
                             text=True)
        if got.returncode != 0:
            return f"no {package} headers (build-aux/install-deps docs installs them)"
        argv += got.stdout.split() + [f"-DDOC_FRAGMENT_{arg.upper()}"]
    return argv, ".cpp" if block.language == "cpp" else ".c"


COMPILED = code_blocks("compiled")


def test_most_fragments_are_compiled():
    # A typo in the marker would silently leave a page's C untested.
    assert len(COMPILED) >= 25, block_ids(COMPILED)


@pytest.mark.parametrize("block", COMPILED, ids=block_ids(COMPILED))
def test_fragment_compiles(block, tmp_path):
    how = compiler_for(block)
    if isinstance(how, str):
        pytest.skip(how)
    argv, suffix = how
    source = tmp_path / f"fragment{suffix}"
    source.write_text(harness(block))
    r = subprocess.run(argv + [str(source)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{block.where} does not compile:\n{r.stderr}\n{harness(block)}"


# ---- the build commands, against an installed copy --------------------------------------

INSTALLED = code_blocks("runnable", "installed", ("sh",))


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """This build installed under a staging directory: what `make install` puts in place."""
    if not shutil.which("cmake") or not shutil.which("pkg-config"):
        pytest.skip("no cmake or pkg-config")
    where = tmp_path_factory.mktemp("staged")
    subprocess.run(["cmake", "--install", BUILD_DIR], check=True, capture_output=True,
                   timeout=300, env=dict(os.environ, DESTDIR=str(where)))
    return where


def test_the_build_commands_are_run():
    assert len(INSTALLED) >= 2, block_ids(INSTALLED)


@pytest.mark.parametrize("block", INSTALLED, ids=block_ids(INSTALLED))
def test_build_command(block, staged, tmp_path):
    for ext in ("c", "cpp"):
        shutil.copy(os.path.join(SOURCE_DIR, "examples", f"minimal_host.{ext}"),
                    tmp_path / f"host.{ext}")
    libdirs = [str(p.parent.parent) for p in staged.rglob("tether.pc")]
    assert libdirs, f"no tether.pc installed under {staged}"
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(libdirs[0], "pkgconfig"),
               PKG_CONFIG_SYSROOT_DIR=str(staged),
               CMAKE_PREFIX_PATH=os.path.dirname(libdirs[0]))
    r = subprocess.run(["sh", "-ec", block.source], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{block.where}:\n{r.stdout}{r.stderr}"
    # The program built runs: a second as a host, then exits 0 (the library found at
    # run time through the installed prefix).
    runtime_dir = private_runtime_dir()
    try:
        host = tmp_path / "host" if (tmp_path / "host").exists() else tmp_path / "build" / "host"
        run = subprocess.run([str(host), "1"], capture_output=True, text=True,
                             timeout=30, env=dict(env, TETHER_RUNTIME_DIR=runtime_dir,
                                                  LD_LIBRARY_PATH=libdirs[0]))
        assert run.returncode == 0, run.stdout + run.stderr
        assert "serving on unix:" in run.stdout + run.stderr
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
