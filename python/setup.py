"""Build of the tether package's C extension (the rest of the metadata is pyproject.toml).

The extension tether._tether is python/_tether/*.c compiled together with the library's
own sources (../src, ../include), so the one _tether.abi3.so carries libtether inside and
needs only libuv from the system (with TETHER_LIBUV=static, libuv is inside too). It is
built for the stable ABI (Py_LIMITED_API 3.10, set in _tether/module.h): one build serves
every CPython from 3.10 on.

    pip install --no-build-isolation ./python
    python3 setup.py build_ext --inplace      (from python/: puts it in python/tether/)
    make wheel                                (from the top: a wheel with libuv inside)
"""

import glob
import os
import re
import shlex
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rel(path):
    """path relative to this file's directory, as setuptools wants source paths."""
    return os.path.relpath(path, HERE)


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out.stdout)


def static_libuv_flags():
    """Compile and link flags that link libuv-static's archive (pkg-config) into the
    extension, named by its path: Python's own library directory, where Debian's
    libuv_a.a is, comes first in the link's search path."""
    cflags = pkg_config("--cflags", "libuv-static")
    libs = pkg_config("--libs", "--static", "libuv-static")
    if cflags is None or libs is None:
        sys.exit(
            "setup.py: TETHER_LIBUV=static needs pkg-config and libuv-static.pc "
            "(Debian: libuv1-dev; make wheel sets it up)"
        )
    dirs = [arg[2:] for arg in libs if arg.startswith("-L")]
    linked = []
    for arg in libs:
        if arg.startswith("-luv"):
            name = "lib" + arg[2:] + ".a"
            found = [os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))]
            if not found:
                sys.exit(f"setup.py: TETHER_LIBUV=static: no {name} in {dirs}")
            linked.append(found[0])
        elif not arg.startswith("-L"):
            linked.append(arg)
    # libdl and librt are parts of libc since glibc 2.34: --as-needed keeps their empty
    # placeholder libraries out of the extension's dependencies.
    return cflags, ["-Wl,--as-needed"] + linked + ["-lpthread"]


def dependency_flags():
    """Compile and link flags of libuv, as $TETHER_LIBUV says.

    shared (the default): the system's libuv.so (pkg-config libuv, else plain names).
    static: libuv linked into the extension, so that the installed package needs no libuv
    at all (make wheel). The archive must be position-independent code: build-aux/libuv-pic
    checks Debian's and otherwise builds one, whose libuv-static.pc make wheel puts first
    in PKG_CONFIG_PATH. The version script _tether.map keeps libuv's symbols local to the
    extension.
    """
    mode = os.environ.get("TETHER_LIBUV", "shared")
    if mode == "static":
        return static_libuv_flags()
    if mode != "shared":
        sys.exit(f"setup.py: TETHER_LIBUV must be shared or static, not {mode!r}")
    cflags = pkg_config("--cflags", "libuv")
    libs = pkg_config("--libs", "libuv")
    if cflags is None or libs is None:
        return [], ["-luv", "-lpthread"]
    return cflags, libs + ["-lpthread"]


# The extension's own files: a file per concept, with one internal header, module.h.
extension_sources = sorted(glob.glob(os.path.join(HERE, "_tether", "*.c")))
# The library's sources, in src/ or in its folders by layer, with one implementation of
# the platform layer: linux.c on Linux, posix.c elsewhere (CMake's TETHER_PLATFORM).
PLATFORM = "linux" if sys.platform.startswith("linux") else "posix"
PLATFORM_FILES = {os.path.join(ROOT, "src", "platform", name + ".c") for name in ("linux", "posix")}
core_sources = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "src", "**", "*.c"), recursive=True)
    if p not in PLATFORM_FILES or p == os.path.join(ROOT, "src", "platform", PLATFORM + ".c")
)
if not core_sources or not os.path.exists(os.path.join(ROOT, "include", "tether.h")):
    sys.exit(
        "setup.py: the library sources (../src, ../include/tether.h) are missing: "
        "build from a checkout of the whole repository"
    )

cflags, libs = dependency_flags()
os.chdir(HERE)  # setuptools resolves relative source paths from here

extension = Extension(
    "tether._tether",
    sources=[rel(p) for p in extension_sources + core_sources],
    include_dirs=[rel(os.path.join(ROOT, "include")), rel(os.path.join(ROOT, "src"))],
    # The BSDs and macOS have getpeereid (posix.c falls back without it).
    define_macros=[] if PLATFORM == "linux" else [("TETHER_HAVE_GETPEEREID", "1")],
    extra_compile_args=["-std=c11", "-fvisibility=hidden", "-Wno-unused-parameter"] + cflags,
    extra_link_args=libs + ["-Wl,--version-script=" + os.path.join(HERE, "_tether.map")],
    depends=[rel(p) for p in glob.glob(os.path.join(ROOT, "src", "**", "*.h"), recursive=True)]
    + [rel(os.path.join(HERE, "_tether", "module.h"))]
    + [rel(os.path.join(ROOT, "include", "tether.h")), "_tether.map"],
    py_limited_api=True,
)

with open(os.path.join(HERE, "tether", "__init__.py"), encoding="utf-8") as f:
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    version=version,
    packages=["tether"],
    ext_modules=[extension],
    # The wheel tag says abi3, from 3.10: one build for every later CPython.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
