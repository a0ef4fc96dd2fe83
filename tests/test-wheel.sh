#!/bin/sh
# test-wheel: the wheel of `make wheel` (build-aux/build-wheel) installs with
# `pip install --no-index` into a fresh virtual environment of another interpreter than the
# one that built it; its extension depends on nothing beyond the C library (libuv and
# libtether are inside, their symbols hidden), and from that environment the `tether`
# command (--version, call), a client calling a real host (build/tether-testhost), and
# run_script spawning a child interpreter all work.
# ctest: timeout=300 labels=python,slow skip=77
# ctest: needs the Python package (a build without it, sanitized, does not test the wheel).
#
# The wheel is build/wheel's, rebuilt first when any file it is made from is newer (a
# first build fetches and compiles libuv too: about a minute; then the test takes seconds).
# Skipped (exit 77) only when libuv's source cannot be fetched from Debian's archive, or
# when no interpreter here can make a virtual environment with pip.

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
# Nothing of the checkout or of this build may leak into the environment under test.
unset PYTHONPATH PYTHONHOME TETHER_PYTHONPATH TETHER_ADDRESS
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# --- the wheel ---------------------------------------------------------------------------

rc=0
wheel=$("$source/build-aux/build-wheel" "$build/wheel" 2>"$out/build-wheel.log") || rc=$?
if [ $rc -eq 77 ]; then
    echo "skip: libuv's source cannot be fetched from Debian's archive here:"
    show "$out/build-wheel.log"
    exit 77
elif [ $rc -ne 0 ]; then
    fail "build-aux/build-wheel exited $rc:"
    show "$out/build-wheel.log"
    finish test-wheel
fi
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$source/python/tether/__init__.py")
case $(basename "$wheel") in
"tether-$version-cp310-abi3-linux_$(uname -m).whl") ok "the wheel is $(basename "$wheel")" ;;
*) fail "unexpected wheel name $(basename "$wheel") (version $version)" ;;
esac

# --- a fresh virtual environment of another interpreter -----------------------------------

# other_python: the real path of the first python3 (3.10 or newer) on PATH that is not
# Debian's /usr/bin/python3 (pyenv's shim names the interpreter it runs).
other_python() {
    system=$(readlink -f /usr/bin/python3 2>/dev/null)
    old_ifs=$IFS
    IFS=:
    for d in $PATH; do
        IFS=$old_ifs
        [ -n "$d" ] && [ -x "$d/python3" ] || continue
        exe=$("$d/python3" -c \
            'import sys; assert sys.version_info >= (3, 10); print(sys.executable)' \
            2>/dev/null) || continue
        [ -n "$exe" ] && [ "$(readlink -f "$exe")" != "$system" ] || continue
        echo "$exe"
        return 0
    done
    IFS=$old_ifs
    return 1
}

venv=$rt/venv
made=
for python in $(other_python) /usr/bin/python3; do
    rm -rf "$venv"
    # Not --system-site-packages: only what the wheel brings (and pip) is there.
    if "$python" -m venv "$venv" >"$out/venv.log" 2>&1 && [ -x "$venv/bin/pip" ]; then
        made=$python
        break
    fi
    echo "note: $python cannot make a virtual environment with pip:"
    show "$out/venv.log"
done
if [ -z "$made" ]; then
    echo "skip: no interpreter here makes a virtual environment with pip (python3-venv)"
    exit 77
fi
py=$venv/bin/python
if [ "$(readlink -f "$made")" != "$(readlink -f /usr/bin/python3)" ]; then
    ok "the environment's interpreter ($made) is not the one that built the wheel"
else
    echo "note: no other python3 on PATH: the environment is /usr/bin/python3's"
fi
if "$py" -c 'import tether' >/dev/null 2>&1; then
    fail "tether is importable in the fresh environment before the wheel is installed"
else
    ok "the fresh environment has no tether"
fi

"$venv/bin/pip" install --no-index "$wheel" >"$out/pip.log" 2>&1
expect_status "pip install --no-index $(basename "$wheel")" $? "$out/pip.log"

# --- the extension: only the C library ----------------------------------------------------

# From $rt, so that no tether directory of the checkout is on sys.path.
so=$(cd "$rt" && "$py" -c 'import tether._tether as m; print(m.__file__)' 2>"$out/import.log")
case $so in
"$venv"/lib/python3*/site-packages/tether/_tether.abi3.so) ok "imports $so" ;;
*)
    fail "tether._tether is not the installed one: '$so'"
    show "$out/import.log"
    ;;
esac
if [ -f "$so" ]; then
    ldd "$so" >"$out/ldd" 2>&1
    awk '{ print $1 }' "$out/ldd" >"$out/ldd-names"
    # The C library's parts and the dynamic loader (ld-linux-x86-64.so.2, ld-linux.so.2...).
    libc='linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libpthread\.so\.0'
    grep -vE "^($libc|/lib(64)?/ld-linux[-a-z0-9_.]*\.so\.[0-9]+)\$" "$out/ldd-names" \
        >"$out/ldd-other"
    if [ -s "$out/ldd-other" ] || ! grep -q 'libc\.so\.6' "$out/ldd"; then
        fail "the extension depends on more than the C library:"
        show "$out/ldd"
    else
        ok "ldd: the extension needs only the C library: $(tr '\n' ' ' <"$out/ldd-names")"
    fi
    nm -D --defined-only "$so" | awk '{ print $3 }' >"$out/exports"
    if [ "$(cat "$out/exports")" = "PyInit__tether" ]; then
        ok "exports only PyInit__tether (libuv's and libtether's symbols are hidden)"
    else
        fail "exports more than PyInit__tether:"
        show "$out/exports"
    fi
fi

# --- the tether command -------------------------------------------------------------------

(cd "$rt" && "$venv/bin/tether" --version) >"$out/version" 2>&1
expect_status "tether --version" $? "$out/version"
expect_line "$out/version" "tether $version" "tether --version names the wheel's version"
core=$(sed -n 's/^#define TETHER_VERSION_STRING "\(.*\)"$/\1/p' "$source/include/tether.h")
expect_line "$out/version" "core $core (libtether)" "the libtether inside is this checkout's"
expect_match "$out/version" "^python .* ($venv/bin/python[0-9.]*)$" \
    "it runs the environment's interpreter"

# --- README.md's block, as written --------------------------------------------------------

# Its `<!-- runnable: wheel -->` block runs line by line in a scratch directory whose
# build/ is this build, with `make` meaning this checkout's make on this build (packages
# installed already): so `make wheel` finds the wheel above up to date.
real_make=$(command -v make)
mkdir -p "$rt/bin" "$rt/readme"
printf '#!/bin/sh\nTETHER_SKIP_DEPS=1 exec "%s" --no-print-directory -C "%s" BUILD="%s" "$@"\n' \
    "$real_make" "$source" "$build" >"$rt/bin/make"
chmod +x "$rt/bin/make"
ln -s "$build" "$rt/readme/build"
awk '/^<!-- runnable: wheel -->$/ { getline; inside = 1; next }
     inside && /^```/ { exit }
     inside { print }' "$source/README.md" >"$out/readme-block"
if [ ! -s "$out/readme-block" ]; then
    fail "README.md has no <!-- runnable: wheel --> block"
fi
: >"$out/readme-run"
while IFS= read -r line; do
    [ -n "$line" ] || continue
    echo "\$ $line" >>"$out/readme-run"
    if ! (cd "$rt/readme" && PATH="$rt/bin:$PATH" sh -c "$line") </dev/null \
        >>"$out/readme-run" 2>&1; then
        fail "README.md's line '$line' failed:"
        show "$out/readme-run"
        break
    fi
done <"$out/readme-block"
expect_line "$out/readme-run" "tether $version" "README.md's wheel block installs a working tether"

# --- a real host --------------------------------------------------------------------------

# tether-testhost serves until its standard input closes: a FIFO kept open on fd 3.
mkfifo "$rt/host.in"
"$build/tether-testhost" wheelhost <"$rt/host.in" >"$out/host.out" 2>"$out/host.err" &
host_pid=$!
exec 3>"$rt/host.in"
i=0
while ! grep -q '^ready ' "$out/host.out" 2>/dev/null && [ $i -lt 200 ]; do
    i=$((i + 1))
    sleep 0.05
done
address=$(sed -n 's/^ready //p' "$out/host.out")
if [ -z "$address" ]; then
    fail "tether-testhost did not start:"
    show "$out/host.err"
fi

if [ -n "$address" ]; then
    (cd "$rt" && "$venv/bin/tether" -H "$address" call add 40 2) >"$out/cli-call" 2>&1
    expect_status "tether call add 40 2" $? "$out/cli-call"
    expect_line "$out/cli-call" "42" "the installed tether command calls the host"

    (cd "$rt" && "$py" - "$address") >"$out/client" 2>&1 <<'EOF'
import sys, tether
conn = tether.connect(name="wheel-client", address=sys.argv[1], timeout=10.0)
print(tether.__file__)
print(conn.root.add(40, 2), conn.root.echo([b"x", {"k": (1, 2)}]))
conn.close()
EOF
    expect_status "a client in the environment" $? "$out/client"
    expect_match "$out/client" "^$venv/lib/python3[0-9.]*/site-packages/tether/__init__.py$" \
        "the client imports the installed package"
    expect_line "$out/client" "42 [b'x', {'k': [1, 2]}]" "the client's calls to the host return"
fi

# --- run_script: a child interpreter from the environment ---------------------------------

(cd "$rt" && "$py" -) >"$out/run-script" 2>&1 <<'EOF'
import sys, tether
child = tether.run_script(
    "import sys, tether\n"
    "def where():\n"
    "    return [sys.executable, tether._tether.__file__]\n"
    "def twice(x):\n"
    "    return 2 * x\n",
    python_exe=sys.executable, name="wheel-child", timeout=30.0,
)
print(child.twice(21))
exe, so = child.where()
print("child", exe == sys.executable, so == tether._tether.__file__)
EOF
expect_status "run_script from the environment" $? "$out/run-script"
expect_line "$out/run-script" "42" "the child interpreter answers a call"
expect_line "$out/run-script" "child True True" \
    "the child runs the environment's interpreter with the installed extension"

exec 3>&-
rc=0
wait_for_exit "$host_pid" 10 || rc=$?
if [ $rc -eq 124 ]; then
    fail "tether-testhost did not exit when its input closed"
elif [ $rc -ne 0 ]; then
    fail "tether-testhost exited $rc:"
    show "$out/host.err"
fi
finish test-wheel
