#!/bin/sh
# test-embedding-example: examples/game_loop_host.c, the frame-loop host of
# docs/embedding.md, runs a bounded number of frames, serves its in-process bots within
# the dispatch budget, completes the census call-back without deadlocking, and stops
# cleanly on SIGINT.
# ctest: timeout=60 labels=examples
#
# Run by ctest through build/run-test, which sets TETHER_BUILD_DIR and a fresh private
# TETHER_RUNTIME_DIR; the host puts its socket there.

set -u
build=${TETHER_BUILD_DIR:?run this through ctest (TETHER_BUILD_DIR is not set)}
rt=${TETHER_RUNTIME_DIR:?run this through ctest (TETHER_RUNTIME_DIR is not set)}
host=$build/example-game_loop_host
socket=$rt/game.sock
out=$rt/out
mkdir -p "$out" || exit 1

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
ok() {
    echo "ok: $*"
}
show() {
    sed 's/^/    | /' "$1"
}

# wait_for_exit PID SECONDS: wait for a background process, then its exit status.
# One still running after SECONDS is killed and reported as 124.
wait_for_exit() {
    i=0
    while kill -0 "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt $(($2 * 20)) ]; then
            kill -KILL "$1" 2>/dev/null
            wait "$1" 2>/dev/null
            return 124
        fi
        sleep 0.05
    done
    wait "$1"
}

# expect FILE PATTERN WHAT: FILE has a line matching the basic regular expression.
expect() {
    if grep -q "$2" "$1"; then
        ok "$3"
    else
        fail "$3: no line matching '$2' in $(basename "$1"):"
        show "$1"
    fi
}

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
rc=$?
if [ $rc -eq 0 ]; then
    ok "--frames 30 exits 0"
else
    fail "--frames 30 exited $rc:"
    show "$out/plain"
fi
expect "$out/plain" "^serving on unix:$socket: spawn(name) and count()" "prints its address"
expect "$out/plain" '^done after frame 30: 30 frames, 0 calls' "stops after 30 frames"
if [ -e "$socket" ]; then
    fail "left its socket behind"
else
    ok "removes its socket"
fi

# --- bots spawn through the budget, then the census call-back -----------------------------

run bots 30 --frames 180 --bots 4 --spawns 50
rc=$?
if [ $rc -eq 0 ]; then
    ok "--bots 4 exits 0"
else
    fail "--bots 4 exited $rc:"
    show "$out/bots"
fi
n=$(grep -c '^frame [0-9]*: client bot-[1-4] (pid [0-9]*) connected$' "$out/bots")
if [ "$n" -eq 4 ]; then
    ok "on_client reports the 4 bots"
else
    fail "on_client reported $n bots instead of 4:"
    show "$out/bots"
fi
expect "$out/bots" '^frame [0-9]*: census by bot-1: 200 entities' \
    "the main thread's call to bot-1 gets its call-back to count() answered"
expect "$out/bots" '^frame [0-9]*: all 4 bots done$' "all bots spawned their entities"
expect "$out/bots" '^frame 60: 60 frames, [0-9]* calls, .* frames left work queued, .*scene 200$' \
    "prints a stats line each second"
expect "$out/bots" '^done after frame 180: 180 frames, 201 calls, .*scene 200$' \
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
i=0
while [ ! -S "$socket" ] && [ $i -lt 100 ]; do
    i=$((i + 1))
    sleep 0.05
done
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

if [ $failures -ne 0 ]; then
    echo "test-embedding-example: $failures failed"
    exit 1
fi
echo "test-embedding-example: all passed"
