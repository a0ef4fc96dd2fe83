/*
 * Spawning interpreters from a C host: a script, a module and an object in a child
 * python3 process, calls through the root proxy, the child's output, its exit, and the
 * failures (a bad script, a missing or wrong interpreter) that must leave nothing behind.
 *
 * ctest: needs the Python package (the children import it from this build).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "helpers.h"

typedef struct output_log {
    pthread_mutex_t lock;
    char text[4096];
} output_log;

static void
collect_output(void *userdata, tether_child *child, int stream, const char *line)
{
    output_log *log = userdata;
    pthread_mutex_lock(&log->lock);
    size_t n = strlen(log->text);
    snprintf(log->text + n, sizeof(log->text) - n, "%s%s\n",
             stream == TETHER_CHILD_STDERR ? "err: " : "", line);
    pthread_mutex_unlock(&log->lock);
}

static tether_host *
spawn_host(void)
{
    tether_host_options o = {.no_unix = true};
    tether_host *h = test_host_new(&o);
    ASSERT_OK(tether_host_start(h));
    return h;
}

static bool
process_gone(int64_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%lld", (long long)pid);
    struct stat st;
    return stat(path, &st) < 0; /* reaped: not even a zombie is left */
}

/* Processes whose parent is this one, zombies included (the process table, /proc). */
static int
count_children(void)
{
    DIR *proc = opendir("/proc");
    cr_assert_not_null(proc);
    int n = 0;
    for (struct dirent *e; (e = readdir(proc));) {
        char path[300], line[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = e->d_name[0] >= '0' && e->d_name[0] <= '9' ? fopen(path, "r") : NULL;
        if (!f) {
            continue;
        }
        /* pid (comm) state ppid ...: comm may hold spaces, so start after its ')'. */
        char *close_paren;
        long ppid;
        if (fgets(line, sizeof(line), f) && (close_paren = strrchr(line, ')')) &&
            sscanf(close_paren + 1, " %*c %ld", &ppid) == 1 && ppid == (long)getpid()) {
            n++;
        }
        fclose(f);
    }
    closedir(proc);
    return n;
}

static void
wait_gone(int64_t pid)
{
    for (int i = 0; i < 300 && !process_gone(pid); i++) {
        usleep(10000);
    }
    cr_assert(process_gone(pid), "process %lld is still there", (long long)pid);
}

static char *
call_str(tether_object *obj, const char *method, const char *arg)
{
    tether_value *v = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = arg ? tether_object_call(obj, method, NULL, &v, &err, "s", arg)
                : tether_object_call(obj, method, NULL, &v, &err, NULL);
    cr_assert_eq(r, 0, "%s: %s: %s", method, err.type ? err.type : "", err.message ? err.message : "");
    const char *s = NULL;
    ASSERT_OK(tether_value_read(v, NULL, "s", &s));
    char *copy = strdup(s);
    tether_value_unref(v);
    return copy;
}

Test(spawn, a_script_runs_and_its_functions_are_called_through_the_root)
{
    tether_host *h = spawn_host();
    output_log log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    const char *args[] = {"one", "two", NULL};
    tether_spawn_options o = {
        .script = "import sys\n"
                  "x = 5\n"
                  "def say_hello(name):\n"
                  "    return 'hello ' + name\n"
                  "print('started with', sys.argv[1:])\n"
                  "print('to stderr', file=sys.stderr)\n",
        .args = args,
        .name = "scripted",
        .output = collect_output,
        .output_userdata = &log,
    };
    tether_child *child = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = tether_host_spawn(h, &o, &child, &err);
    cr_assert_eq(r, 0, "spawn: %s: %s", err.type, err.message);
    int64_t pid = tether_child_get_pid(child);
    cr_assert(pid > 0);
    tether_object *root = tether_child_get_root(child);
    cr_assert(tether_object_is_remote(root));
    char *hello = call_str(root, "say_hello", "earthling");
    cr_assert_str_eq(hello, "hello earthling");
    free(hello);

    /* The child is a client of the host like any other. */
    tether_conn *found = NULL;
    ASSERT_OK(tether_host_get_client(h, "scripted", &found));
    cr_assert_eq(found, tether_child_get_conn(child));
    cr_assert_eq(tether_conn_get_peer_pid(found), pid);
    tether_conn_unref(found);

    for (int i = 0; i < 200 && !strstr(log.text, "to stderr"); i++) {
        usleep(10000);
    }
    pthread_mutex_lock(&log.lock);
    cr_assert(strstr(log.text, "started with ['one', 'two']\n"), "output: %s", log.text);
    cr_assert(strstr(log.text, "err: to stderr\n"), "output: %s", log.text);
    pthread_mutex_unlock(&log.lock);

    ASSERT_OK(tether_child_terminate(child));
    int status = 99;
    ASSERT_OK(tether_child_wait(child, 5000000, &status));
    cr_assert(status == 0 || status == -SIGTERM, "status %d", status);
    wait_gone(pid);
    tether_child_unref(child);
    tether_host_unref(h);
}

Test(spawn, modules_and_objects)
{
    tether_host *h = spawn_host();
    tether_spawn_options o = {.module = "json"};
    tether_child *child = NULL;
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_host_spawn(h, &o, &child, &err), 0, "%s", err.message);
    tether_value *v = NULL;
    ASSERT_OK(tether_object_call(tether_child_get_root(child), "dumps", NULL, &v, NULL, "[ii]", 1,
                                 2));
    const char *s;
    ASSERT_OK(tether_value_read(v, NULL, "s", &s));
    cr_assert_str_eq(s, "[1, 2]");
    tether_value_unref(v);
    int64_t pid = tether_child_get_pid(child);
    tether_child_unref(child); /* the last reference ends it */
    wait_gone(pid);

    tether_value *args;
    ASSERT_OK(tether_value_new(&args, "[s]", "hello, world!"));
    tether_spawn_options obj = {.object_module = "io", .object_class = "StringIO",
                                .object_args = args};
    cr_assert_eq(tether_host_spawn(h, &obj, &child, &err), 0, "%s", err.message);
    tether_value_unref(args);
    char *text = call_str(tether_child_get_root(child), "getvalue", NULL);
    cr_assert_str_eq(text, "hello, world!");
    free(text);
    pid = tether_child_get_pid(child);
    tether_child_unref(child);
    wait_gone(pid);
    tether_error_done(&err);
    tether_host_unref(h);
}

static atomic_int exit_seen = -1000;

static void
on_child_exit(void *userdata, tether_child *child, int status)
{
    (void)userdata;
    (void)child;
    atomic_store(&exit_seen, status);
}

Test(spawn, the_host_learns_the_exit_status_on_its_main_thread)
{
    tether_host *h = spawn_host();
    tether_spawn_options o = {.script = "import os, threading\n"
                                        "def leave(code):\n"
                                        "    threading.Timer(0.05, os._exit, (code,)).start()\n",
                              .on_exit = on_child_exit};
    tether_child *child = NULL;
    ASSERT_OK(tether_host_spawn(h, &o, &child, NULL));
    tether_value *v = NULL;
    ASSERT_OK(tether_object_call(tether_child_get_root(child), "leave", NULL, &v, NULL, "i", 7));
    tether_value_unref(v);
    int status = 0;
    ASSERT_OK(tether_child_wait(child, 5000000, &status));
    cr_assert_eq(status, 7);
    cr_assert_eq(atomic_load(&exit_seen), -1000, "told at dispatch, not before");
    ASSERT_OK(tether_host_wait(h, 1000000) >= 0 ? 0 : -1);
    cr_assert_eq(atomic_load(&exit_seen), 7);
    ASSERT_ERR(tether_child_terminate(child), TETHER_EALREADY);
    tether_child_unref(child);
    tether_host_unref(h);
}

Test(spawn, failures_are_clear_and_leave_nothing_running)
{
    tether_host *h = spawn_host();
    tether_child *child = NULL;
    tether_error err = TETHER_ERROR_INIT;

    tether_spawn_options bad = {.script = "def broken(:\n"};
    ASSERT_ERR(tether_host_spawn(h, &bad, &child, &err), TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "SyntaxError");
    cr_assert(err.traceback && strstr(err.traceback, "SyntaxError"), "%s", err.traceback);
    cr_assert_null(child);

    tether_spawn_options missing_module = {.module = "no_such_module_here"};
    ASSERT_ERR(tether_host_spawn(h, &missing_module, &child, &err), TETHER_EREMOTE);
    cr_assert_str_eq(err.type, "ModuleNotFoundError");

    tether_spawn_options no_exe = {.executable = "/nonexistent/python3", .module = "json"};
    ASSERT_ERR(tether_host_spawn(h, &no_exe, &child, &err), TETHER_ENOENT);
    cr_assert(strstr(err.message, "/nonexistent/python3"), "%s", err.message);
    cr_assert(strstr(err.message, "no such file or directory"), "%s", err.message);

    tether_spawn_options not_python = {.executable = "/bin/true", .module = "json"};
    ASSERT_ERR(tether_host_spawn(h, &not_python, &child, &err), TETHER_ECONNRESET);
    cr_assert(strstr(err.message, "exited before connecting"), "%s", err.message);

    tether_spawn_options two = {.module = "json", .script = "x = 1"};
    ASSERT_ERR(tether_host_spawn(h, &two, &child, &err), TETHER_EINVAL);

    tether_spawn_options hangs = {.script = "import time\ntime.sleep(30)\n",
                                  .start_timeout_usec = 300000};
    ASSERT_ERR(tether_host_spawn(h, &hangs, &child, &err), TETHER_ETIMEDOUT);

    tether_error_done(&err);
    /* None of them is left: no child of ours, zombie or not. */
    for (int i = 0; i < 300 && count_children() > 0; i++) {
        usleep(10000);
    }
    cr_assert_eq(count_children(), 0);
    tether_host_unref(h);
}

Test(spawn, warm_spawns_fork_from_a_kept_interpreter)
{
    tether_host *h = spawn_host();
    output_log log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int64_t pids[3];
    for (int i = 0; i < 3; i++) {
        tether_spawn_options o = {.script = "import os\n"
                                            "def ids():\n"
                                            "    return [os.getpid(), os.getppid()]\n"
                                            "print('warm', os.getcwd())\n",
                                  .warm = true,
                                  .cwd = "/tmp",
                                  .output = collect_output,
                                  .output_userdata = &log,
                                  .on_exit = on_child_exit};
        tether_child *child = NULL;
        tether_error err = TETHER_ERROR_INIT;
        int r = tether_host_spawn(h, &o, &child, &err);
        cr_assert_eq(r, 0, "warm spawn %d: %s", i, err.message);
        tether_value *v = NULL;
        int64_t pid = 0, ppid = 0;
        ASSERT_OK(tether_object_call(tether_child_get_root(child), "ids", NULL, &v, NULL, NULL));
        ASSERT_OK(tether_value_read(v, NULL, "[xx]", &pid, &ppid));
        tether_value_unref(v);
        pids[i] = pid;
        cr_assert_eq(pid, tether_child_get_pid(child));
        cr_assert_neq(ppid, (int64_t)getpid(), "a warm child is the fork server's");
        ASSERT_OK(tether_child_terminate(child));
        int status = 99;
        ASSERT_OK(tether_child_wait(child, 5000000, &status));
        cr_assert(status == 0 || status == -SIGTERM, "status %d", status);
        tether_child_unref(child);
    }
    cr_assert(pids[0] != pids[1] && pids[1] != pids[2]);
    for (int i = 0; i < 200 && !strstr(log.text, "warm /tmp"); i++) {
        usleep(10000);
    }
    cr_assert(strstr(log.text, "warm /tmp\n"), "output: %s", log.text);
    /* Stopping the host ends its fork server: nothing of ours is left. */
    tether_host_unref(h);
    for (int i = 0; i < 300 && count_children() > 0; i++) {
        usleep(10000);
    }
    cr_assert_eq(count_children(), 0);
}

/* A fork server that starts like the real one and answers each request with the bytes of
 * $TETHER_FAKE_ANSWER's entry (or, for "ready", says something else than ready), each
 * after its length on a SOCK_STREAM control socket (the portable build's). */
static const char fake_forkserver[] =
    "import os, socket, struct\n"
    "ANSWERS = {\n"
    "    'truncated': b'\\x81\\xa3pid\\xce\\x00',\n"
    "    'trailing': b'\\x81\\xa3pid\\x01\\x00',\n"
    "    'array': b'\\x92\\x01\\x02',\n"
    "    'str-pid': b'\\x81\\xa3pid\\xa11',\n"
    "    'float-pid': b'\\x81\\xa3pid\\xcb' + bytes(8),\n"
    "    'unknown': b'\\x81\\xa5hello\\x01',\n"
    "    'huge-count': b'\\xdf\\xff\\xff\\xff\\xff',\n"
    "    'oversized': b'\\x81\\xa5error\\xdb' + struct.pack('>I', 70000) + b'x' * 70000,\n"
    "    'error': b'\\x81\\xa5error\\xa9no memory',\n"
    "}\n"
    "def main():\n"
    "    control = socket.socket(fileno=int(os.environ['TETHER_CHILD_FD']))\n"
    "    stream = control.type == socket.SOCK_STREAM\n"
    "    def send(data):\n"
    "        control.sendall(struct.pack('>I', len(data)) + data if stream else data)\n"
    "    mode = os.environ['TETHER_FAKE_ANSWER']\n"
    "    ready = b'\\x81\\xa5ready\\xce' + struct.pack('>I', os.getpid())\n"
    "    send(b'\\xc1' if mode == 'ready' else ready)\n"
    "    while True:\n"
    "        data, fds, _, _ = socket.recv_fds(control, 65536, 3)\n"
    "        for fd in fds:\n"
    "            os.close(fd)\n"
    "        if not data:\n"
    "            return\n"
    "        send(ANSWERS[mode])\n";

static void
write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

Test(spawn, a_fork_server_that_breaks_the_protocol_fails_the_spawn_not_the_host)
{
    /* mkdtemp's template: the prefix, then six placeholder letters it replaces. */
    char root[64] = "/tmp/tether-fake-forkserver-", package[600];
    size_t prefix = strlen(root);
    memset(root + prefix, 'X', 6);
    root[prefix + 6] = '\0';
    cr_assert_not_null(mkdtemp(root));
    snprintf(package, sizeof(package), "%s/tether", root);
    cr_assert_eq(mkdir(package, 0700), 0);
    write_file(package, "__init__.py", "");
    write_file(package, "_forkserver.py", fake_forkserver);
    static const struct {
        const char *mode;
        int r;
        const char *message;
    } cases[] = {
        {"ready", -EPROTO, "malformed message: not one well-formed msgpack value"},
        {"truncated", -EPROTO, "malformed message: not one well-formed msgpack value"},
        {"huge-count", -EPROTO, "malformed message: not one well-formed msgpack value"},
        {"trailing", -EPROTO, "malformed message: bytes after its msgpack value"},
        {"array", -EPROTO, "malformed message: not a map"},
        {"str-pid", -EPROTO, "malformed message: a pid that is not a positive int"},
        {"float-pid", -EPROTO, "malformed message: a pid that is not a positive int"},
        {"unknown", -EPROTO, "malformed message: not a ready, pid, error or exit message"},
        {"oversized", -EPROTO, "malformed message: a message over 64 KiB"},
        {"error", -EIO, "the fork server could not fork: no memory"},
    };
    tether_host *h = spawn_host();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char answer[64];
        snprintf(answer, sizeof(answer), "TETHER_FAKE_ANSWER=%s", cases[i].mode);
        const char *env[] = {answer, "PYTHONDONTWRITEBYTECODE=1", NULL}; /* rmdir below */
        tether_spawn_options o = {.script = "x = 1", .warm = true, .python_path = root, .env = env};
        tether_child *child = NULL;
        tether_error err = TETHER_ERROR_INIT;
        int r = tether_host_spawn(h, &o, &child, &err);
        cr_assert_eq(r, cases[i].r, "%s: %d (%s)", cases[i].mode, r, err.message);
        cr_assert_null(child);
        cr_assert(err.message && strstr(err.message, cases[i].message), "%s: %s", cases[i].mode,
                  err.message);
        tether_error_done(&err);
    }
    /* The host goes on: a real fork server starts and serves. */
    tether_spawn_options o = {.script = "def f():\n    return 'fine'\n", .warm = true};
    tether_child *child = NULL;
    tether_error err = TETHER_ERROR_INIT;
    cr_assert_eq(tether_host_spawn(h, &o, &child, &err), 0, "%s", err.message);
    char *fine = call_str(tether_child_get_root(child), "f", NULL);
    cr_assert_str_eq(fine, "fine");
    free(fine);
    tether_child_unref(child);
    /* The broken servers were ended, the rest end with the host: nothing is left. */
    tether_host_unref(h);
    for (int i = 0; i < 300 && count_children() > 0; i++) {
        usleep(10000);
    }
    cr_assert_eq(count_children(), 0);
    char path[700];
    snprintf(path, sizeof(path), "%s/_forkserver.py", package);
    unlink(path);
    snprintf(path, sizeof(path), "%s/__init__.py", package);
    unlink(path);
    rmdir(package);
    rmdir(root);
}

/* ---- the child's side: what the platform layer has --------------------------------- */

static bool
platform_is_linux(void)
{
    return strcmp(TETHER_TEST_PLATFORM, "linux") == 0;
}

/* A zombie, or gone altogether: dead either way (init reaps orphans when it will). */
static bool
process_dead(int64_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f) {
        return true;
    }
    char *close_paren, state = '?';
    if (fgets(line, sizeof(line), f) && (close_paren = strrchr(line, ')'))) {
        sscanf(close_paren + 1, " %c", &state);
    }
    fclose(f);
    return state == 'Z' || state == 'X';
}

/*
 * A process that asked for a parent-death signal and holds nothing of its parent's (no
 * socket whose end it could see) dies with the parent. The portable build has no such
 * signal: tether_process_set_parent_death_signal says so, and its children rely on the
 * end of their socket alone, which test_a_child_does_not_outlive_a_killed_parent
 * (python/tests/test_spawn.py) checks on both builds.
 */
Test(spawn, a_parent_death_signal_where_the_platform_has_one)
{
    if (!platform_is_linux()) {
        cr_assert_eq(tether_process_set_parent_death_signal(SIGTERM), TETHER_ENOTSUP);
        cr_skip_test("no parent-death signal on the %s build (children exit at the end of "
                     "their socket instead)",
                     TETHER_TEST_PLATFORM);
    }
    int up[2], ready[2]; /* the orphan's pid to us; "the guard is set" to its parent */
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(ready), 0);
    pid_t parent = fork();
    cr_assert(parent >= 0);
    if (parent == 0) {
        pid_t orphan = fork();
        if (orphan == 0) {
            int64_t me = tether_process_set_parent_death_signal(SIGKILL) == 0 ? getpid() : -1;
            ssize_t n = write(up[1], &me, sizeof(me));
            n = write(ready[1], "", 1);
            (void)n;
            for (int i = 0; i < 100; i++) {
                sleep(1); /* dies only by the signal (or gives up after 100 s) */
            }
            _exit(3);
        }
        char byte;
        _exit(read(ready[0], &byte, 1) == 1 ? 0 : 1); /* the guard is set: die */
    }
    close(up[1]);
    close(ready[0]);
    close(ready[1]);
    int64_t orphan = 0;
    cr_assert_eq(read(up[0], &orphan, sizeof(orphan)), (ssize_t)sizeof(orphan));
    close(up[0]);
    cr_assert(orphan > 0, "tether_process_set_parent_death_signal failed");
    int status;
    cr_assert_eq(waitpid(parent, &status, 0), parent);
    for (int i = 0; i < 500 && !process_dead(orphan); i++) {
        usleep(10000);
    }
    bool dead = process_dead(orphan);
    if (!dead) {
        kill((pid_t)orphan, SIGKILL);
    }
    cr_assert(dead, "the orphan %lld outlived its parent", (long long)orphan);
}

/* The name ps shows, where the platform can set one (both builds, on Linux). */
Test(spawn, a_process_name_where_the_platform_has_one)
{
    cr_assert_eq(tether_process_set_name(NULL), TETHER_EINVAL);
    int r = tether_process_set_name("tether-named-and-cut");
    if (r == TETHER_ENOTSUP) {
        cr_assert(!platform_is_linux());
        cr_skip_test("the %s build cannot name processes here", TETHER_TEST_PLATFORM);
    }
    cr_assert_eq(r, 0, "%s", tether_strerror(r));
    char name[64] = "";
    FILE *f = fopen("/proc/thread-self/comm", "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(name, sizeof(name), f));
    fclose(f);
    cr_assert_str_eq(name, "tether-named-an\n", "the first 15 bytes");
}
