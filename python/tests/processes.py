"""The process table, for the tests that spawn interpreters: which children this process
has, and that none is left behind (zombies included). Fork servers that warm spawns keep
for the life of this process, and the spare child each keeps forked ahead of its next
request, are not counted."""

import gc
import os
import time


def stat_fields(pid):
    """/proc/PID/stat after the command name: state, ppid, ... (OSError if gone)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def gone(pid):
    return not os.path.exists(f"/proc/{pid}")


def is_zombie(pid):
    try:
        return stat_fields(pid)[0] == "Z"
    except OSError:
        return True


def is_fork_server(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"TETHER_CHILD_MAIN=_forkserver" in f.read()
    except OSError:
        return False


def is_spare(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "tether-spare"
    except OSError:
        return False


def spawned():
    """This process's children (zombies included), and the children at work of its fork
    servers (warm children); not the fork servers themselves, nor their spares."""
    by_parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                by_parent.setdefault(int(stat_fields(entry)[1]), set()).add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found = set()
    for pid in by_parent.get(os.getpid(), ()):
        if is_fork_server(pid):
            found |= {c for c in by_parent.get(pid, set()) if not is_spare(c)}
        else:
            found.add(pid)
    return found


def eventually(predicate, timeout=10.0, what="condition"):
    """Wait until predicate() is true, collecting garbage meanwhile (proxies going away
    is often what it waits for); AssertionError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gc.collect()
        time.sleep(0.02)


def assert_none_left(before, timeout=10.0):
    """Every process spawned since before (a spawned() set) has ended."""
    gc.collect()
    eventually(lambda: not spawned() - before, timeout,
               f"spawned children to end ({sorted(spawned() - before)} left)")
