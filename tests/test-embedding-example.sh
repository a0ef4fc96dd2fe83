#!/bin/sh
# test-embedding-example: examples/game_loop_host.c, the frame-loop host of
# docs/embedding.md, and its C++ counterpart examples/game_loop_host.cpp, each run a
# bounded number of frames, serve their in-process bots within the dispatch budget,
# complete the census call-back without deadlocking, and stop cleanly on SIGINT; the C++
# one also serves a Python client.
# ctest: timeout=60 labels=examples
#
# Run by ctest through build/run-test (see tests/shell-lib): the host puts its socket in
# the fresh private TETHER_RUNTIME_DIR, $rt.

. "${TETHER_SOURCE_DIR:?run this through ctest (TETHER_SOURCE_DIR is not set)}/tests/shell-lib"
# Messages say which build of the example they are about.
label=""
ok() {
    echo "ok: ${label:+$label: }$*"
}
fail() {
    echo "FAIL: ${label:+$label: }$*"
    failures=$((failures + 1))
}

# check_host BINARY: the checks, for one build of the example.
check_host() {
    host=$1
    label=$(basename "$host")
    socket=$rt/game.sock

    # run NAME SECONDS ARGS...: run the host in the background, bounded, into $out/NAME.
    run() {
        name=$1
        limit=$2
        shift 2
        "$host" "$@" > "$out/$name" 2>&1 &
        wait_for_exit $! "$limit"
    }

    # --- a fixed number of frames, nobody connected ------------------------------------------

    run plain 20 --frames 30
    expect_status "--frames 30" $? "$out/plain"
    expect_match "$out/plain" "^serving on unix:$socket: spawn(name) and count()" "prints its address"
    expect_match "$out/plain" '^done after frame 30: 30 frames, 0 calls' "stops after 30 frames"
    if [ -e "$socket" ]; then
        fail "left its socket behind"
    else
        ok "removes its socket"
    fi

    # --- bots spawn through the budget, then the census call-back -----------------------------

    run bots 30 --frames 180 --bots 4 --spawns 50
    expect_status "--bots 4" $? "$out/bots"
    n=$(grep -c '^frame [0-9]*: client bot-[1-4] (pid [0-9]*) connected$' "$out/bots")
    if [ "$n" -eq 4 ]; then
        ok "on_client reports the 4 bots"
    else
        fail "on_client reported $n bots instead of 4:"
        show "$out/bots"
    fi
    expect_match "$out/bots" '^frame [0-9]*: census by bot-1: 200 entities' \
        "the main thread's call to bot-1 gets its call-back to count() answered"
    expect_match "$out/bots" '^frame [0-9]*: all 4 bots done$' "all bots spawned their entities"
    # How far the scene got by frame 60 depends on the machine (a sanitizer build spends the
    # budget on fewer spawns per frame); the total is checked at the end.
    expect_match "$out/bots" '^frame 60: 60 frames, [0-9]* calls, .* frames left work queued, .*scene [0-9]*$' \
        "prints a stats line each second"
    expect_match "$out/bots" '^done after frame 180: 180 frames, 201 calls, .*scene 200$' \
        "served 200 spawns and 1 count"
    # 200 spawns of 20 us each do not fit in one 500 us budget: some frames left work queued.
    left=$(sed -n 's/^done after frame .* \([0-9][0-9]*\) frames left work queued.*/\1/p' "$out/bots")
    if [ "${left:-0}" -ge 1 ]; then
        ok "the budget spread the spawns over frames ($left frames left work queued)"
    else
        fail "no frame left work queued (${left:-?}):"
        show "$out/bots"
    fi

    # --- until SIGINT -------------------------------------------------------------------------

    "$host" > "$out/signal" 2>&1 &
    pid=$!
    wait_for_socket "$socket"
    sleep 0.2
    kill -INT "$pid"
    wait_for_exit "$pid" 10
    rc=$?
    if [ $rc -eq 0 ] && grep -q '^done after frame [0-9]*:' "$out/signal" && [ ! -e "$socket" ]; then
        ok "runs until SIGINT, then exits 0 and removes its socket"
    else
        fail "after SIGINT: exit $rc:"
        show "$out/signal"
    fi

    "$host" --frames nine > "$out/usage" 2>&1
    rc=$?
    if [ $rc -eq 2 ] && grep -q '^usage: game_loop_host' "$out/usage"; then
        ok "a bad option prints the usage and exits 2"
    else
        fail "--frames nine exited $rc:"
        show "$out/usage"
    fi
}

socket=$rt/game.sock
check_host "$build/example-game_loop_host"
if [ -x "$build/example-game_loop_host-cpp" ]; then
    check_host "$build/example-game_loop_host-cpp"
else
    fail "no example-game_loop_host-cpp (a build without a C++ compiler)"
fi

# --- the C++ host serves a Python client ----------------------------------------------------
label=""

# The client is Python: it needs the package this build makes (not made by sanitizer builds).
if [ -e "$build/python/tether/_tether.abi3.so" ] && [ -x /usr/bin/python3 ] \
    && [ -x "$build/example-game_loop_host-cpp" ]; then
    "$build/example-game_loop_host-cpp" --frames 600 > "$out/cpp-python" 2>&1 &
    pid=$!
    wait_for_socket "$socket"
    PYTHONPATH="$build/python" /usr/bin/python3 - "$socket" > "$out/python-client" 2>&1 <<'PY'
import sys

import tether

conn = tether.connect("py-client", "unix:" + sys.argv[1])
print("spawned", conn.root.spawn("py-crate"), conn.root.spawn("py-box"))
print("count", conn.root.count())
try:
    conn.root.spawn(42)
except Exception as e:
    print("error", type(e).__name__, e)
try:
    conn.root.spawn("")
except Exception as e:
    print("error", type(e).__name__, e)
conn.close()
PY
    rc=$?
    kill -INT "$pid"
    wait_for_exit "$pid" 10
    if [ $rc -eq 0 ] && grep -q '^spawned 1 2$' "$out/python-client" \
        && grep -q '^count 2$' "$out/python-client"; then
        ok "example-game_loop_host-cpp: a Python client spawns and counts"
    else
        fail "example-game_loop_host-cpp with a Python client (exit $rc):"
        show "$out/python-client"
        show "$out/cpp-python"
    fi
    expect_match "$out/python-client" "item 1: expected str, got int" \
        "example-game_loop_host-cpp: a TypeError for a number as a name"
    expect_match "$out/python-client" "an entity needs a name" \
        "example-game_loop_host-cpp: a ValueError for an empty name"
    expect_match "$out/cpp-python" "client py-client (pid [0-9]*) connected" \
        "example-game_loop_host-cpp: on_client reports the Python client"
else
    echo "skip: the C++ host with a Python client (no Python package in this build)"
fi

finish test-embedding-example
