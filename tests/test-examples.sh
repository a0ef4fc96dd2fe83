#!/bin/sh
# test-examples: the programs of examples/ and tools/tether-demo run as the README says,
# and the README's copies of the hello examples are the files in examples/. (The command
# line and the REPL examples are tested by python/tests/test_cli.py.)
# ctest: timeout=120 labels=examples
#
# Run by ctest through build/run-test (see tests/shell-lib): every host below puts its
# socket in the fresh private TETHER_RUNTIME_DIR, $rt.

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"

# --- the README shows examples/hello_host.c and hello_client.c verbatim -----------------

# The lines between <!-- BEGIN FILE --> and <!-- END FILE -->, without the code fences.
readme_copy() {
    awk -v begin="<!-- BEGIN $1 -->" -v end="<!-- END $1 -->" '
        $0 == begin { on = 1; found++; next }
        $0 == end { on = 0; next }
        on && /^```/ { next }
        on { print }
        END { if (found != 1) exit 1 }
    ' "$source/README.md"
}

for example in examples/hello_host.c examples/hello_client.c; do
    if ! readme_copy "$example" > "$out/readme-copy.c"; then
        fail "README.md has no single block between <!-- BEGIN $example --> and <!-- END $example -->"
    elif diff -u "$source/$example" "$out/readme-copy.c" > "$out/readme.diff"; then
        ok "README.md shows $example verbatim"
    else
        fail "README.md's copy of $example differs from the file (update the README):"
        show "$out/readme.diff"
    fi
done

# --- hello_host and hello_client -------------------------------------------------------

socket=$rt/default.sock
"$build/example-hello_host" 60 > "$out/hello_host.out" 2>&1 &
host=$!
if wait_for_socket "$socket"; then
    ok "hello_host listens on $socket"
else
    fail "hello_host made no socket at $socket:"
    show "$out/hello_host.out"
fi
expect_line "$out/hello_host.out" "serving on unix:$socket" "hello_host prints its address"

# The three ways to name the host: the default, $TETHER_ADDRESS, the first argument.
for how in default env argument; do
    case $how in
    default) "$build/example-hello_client" > "$out/client.out" 2>&1 ;;
    env) TETHER_ADDRESS=unix:$socket "$build/example-hello_client" > "$out/client.out" 2>&1 ;;
    argument) "$build/example-hello_client" "unix:$socket" > "$out/client.out" 2>&1 ;;
    esac
    expect_status "hello_client ($how address)" $? "$out/client.out"
    expect_line "$out/client.out" 'add(2, 3) = 5' "hello_client ($how address) calls add"
    expect_line "$out/client.out" 'greet("world") = Hello, world!' \
        "hello_client ($how address) calls greet through a future"
done

# With no host at the address, the client says why and fails.
"$build/example-hello_client" "unix:$rt/nobody.sock" > "$out/client.out" 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q '^hello_client: .*no host at unix:' "$out/client.out"; then
    ok "hello_client without a host fails with a message"
else
    fail "hello_client without a host exited $rc:"
    show "$out/client.out"
fi

kill -TERM "$host"
wait_for_exit "$host"
rc=$?
if [ $rc -eq 0 ]; then
    ok "hello_host exits 0 on SIGTERM"
else
    fail "hello_host exited $rc after SIGTERM:"
    show "$out/hello_host.out"
fi
if [ -e "$socket" ]; then
    fail "hello_host left its socket behind"
else
    ok "hello_host removed its socket"
fi
# Three clients each sent greet("world") as a call and greet("everyone") as a notification.
n=$(grep -cxF 'greeting everyone' "$out/hello_host.out")
if [ "$n" -eq 3 ]; then
    ok "hello_host received the 3 notifications"
else
    fail "hello_host received $n notifications instead of 3:"
    show "$out/hello_host.out"
fi

# The time limit given as argument ends the host too.
"$build/example-hello_host" 1 > "$out/hello_host.out" 2>&1 &
host=$!
wait_for_socket "$socket"
wait_for_exit "$host"
rc=$?
if [ $rc -eq 0 ] && [ ! -e "$socket" ]; then
    ok "hello_host 1 serves for a second and exits 0"
else
    fail "hello_host 1 exited $rc (socket left: $([ -e "$socket" ] && echo yes || echo no)):"
    show "$out/hello_host.out"
fi

# --- minimal_host, in C and in C++ ------------------------------------------------------

for exe in example-minimal_host example-minimal_host-cpp; do
    if [ "$exe" = example-minimal_host-cpp ] && [ ! -x "$build/$exe" ]; then
        continue # a build without a C++ compiler
    fi
    "$build/$exe" 1 > "$out/$exe.out" 2>&1 &
    host=$!
    if wait_for_socket "$socket"; then
        ok "$exe listens on $socket"
    else
        fail "$exe made no socket at $socket"
    fi
    wait_for_exit "$host"
    rc=$?
    if [ $rc -eq 0 ] && [ ! -e "$socket" ]; then
        ok "$exe exits 0 and removes its socket"
    else
        fail "$exe exited $rc:"
        show "$out/$exe.out"
    fi
    expect_line "$out/$exe.out" "serving on unix:$socket" "$exe prints its address"
done

# --- eval_exec and its Python client ---------------------------------------------------

# The client is Python: it needs the package this build makes (not made by sanitizer builds).
if [ -e "$build/python/tether/_tether.abi3.so" ] && [ -x /usr/bin/python3 ]; then
    "$build/example-eval_exec" 20 > "$out/eval_exec.out" 2>&1 &
    host=$!
    if wait_for_socket "$rt/eval_exec.sock"; then
        ok "eval_exec listens on $rt/eval_exec.sock"
    else
        fail "eval_exec made no socket:"
        show "$out/eval_exec.out"
    fi
    PYTHONPATH="$build/python" /usr/bin/python3 "$source/examples/eval_exec_client.py" \
        > "$out/evaluator.out" 2>&1 &
    client=$!
    wait_for_exit "$host" 25
    rc=$?
    if [ $rc -eq 0 ]; then
        ok "eval_exec exits 0"
    else
        fail "eval_exec exited $rc:"
        show "$out/eval_exec.out"
        show "$out/evaluator.out"
    fi
    expect_line "$out/eval_exec.out" "eval(\"x\") -> NameError: name 'x' is not defined" \
        "eval_exec: x is a NameError before anything set it"
    expect_line "$out/eval_exec.out" 'exec("x = 5") -> None' "eval_exec: exec x = 5"
    expect_line "$out/eval_exec.out" 'eval("x") -> 5' "eval_exec: then x is 5"
    wait_for_exit "$client" 10
    rc=$?
    if [ $rc -eq 0 ] && grep -qxF 'evaluator: disconnected by the host' "$out/evaluator.out"; then
        ok "eval_exec_client ends when the host disconnects it"
    else
        fail "eval_exec_client exited $rc:"
        show "$out/evaluator.out"
    fi
else
    echo "skip: eval_exec (this build has no Python package)"
fi

# --- tether-demo -----------------------------------------------------------------------
# (tests/test-demo.c works its scene as a client, on the Unix socket and on TCP.)

# Served until a signal: the address it prints is one the example client can use.
"$build/tether-demo" --name demo-test --seconds 30 > "$out/demo.out" 2>&1 &
demo=$!
wait_for_socket "$rt/demo-test.sock"
# It listens before it prints how to connect: wait for the line too (a slow build, TSan).
address=
for _ in $(seq 100); do
    address=$(sed -n 's/^ *TETHER_ADDRESS=\(unix:[^ ]*\) .*/\1/p' "$out/demo.out")
    [ -n "$address" ] && break
    sleep 0.1
done
if [ "$address" = "unix:$rt/demo-test.sock" ]; then
    ok "tether-demo prints how to connect"
else
    fail "tether-demo printed no TETHER_ADDRESS=unix:$rt/demo-test.sock line:"
    show "$out/demo.out"
fi
TETHER_ADDRESS=$address "$build/example-hello_client" > "$out/client.out" 2>&1
rc=$?
if [ $rc -eq 0 ] && grep -q 'example-hello_client calls add(2, 3) -> 5' "$out/demo.out"; then
    ok "hello_client works against tether-demo, which prints the call"
else
    fail "hello_client against tether-demo exited $rc:"
    show "$out/client.out"
    show "$out/demo.out"
fi
kill -TERM "$demo"
wait_for_exit "$demo"
rc=$?
if [ $rc -eq 0 ] && grep -q "client 'example-hello_client' .* connected" "$out/demo.out" &&
    grep -q "client 'example-hello_client' .* left" "$out/demo.out"; then
    ok "tether-demo logs the client arriving and leaving, and exits 0 on SIGTERM"
else
    fail "tether-demo exited $rc:"
    show "$out/demo.out"
fi

"$build/tether-demo" --no-such-option > "$out/demo.out" 2>&1
rc=$?
if [ $rc -eq 2 ]; then
    ok "tether-demo rejects an unknown option with status 2"
else
    fail "tether-demo --no-such-option exited $rc"
fi

finish test-examples
