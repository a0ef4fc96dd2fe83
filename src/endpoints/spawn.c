/*
 * spawn: child interpreters of a host (tether.h, "Spawning interpreters").
 *
 * libuv starts the process (uv_spawn reaps it and reports its exit on the I/O thread)
 * with stdin on /dev/null, stdout and stderr on pipes read line by line, and one end of
 * a socket pair as fd 3, whose other end the host serves as a trusted client
 * connection. The child runs a small bootstrap (-c) that imports tether._child from
 * python_path; that connects through fd 3 and offers the service "__tether_start__",
 * which the host calls with what to run and which answers the root object by reference.
 *
 * Warm spawns fork instead: the host keeps a fork server per interpreter, environment
 * and package path (python/tether/_forkserver.py: an interpreter that imported tether
 * once), started like a child with a SOCK_SEQPACKET control socket as fd 3. A request
 * carries the child's socket end, stdout and stderr (SCM_RIGHTS); the server forks,
 * answers the pid, and reports each child's exit. Everything after the pid (connect,
 * __tether_start__, output, terminate) is the same for both kinds.
 *
 * Lifetime: `refs` counts the users' references; the last one ends the child if it
 * still runs. `holds` keeps the struct: one for the users together, one for the I/O
 * side while any libuv handle of the child is open, one for each queued task or exit
 * notice.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/alloc.h"
#include "util/condwait.h"
#include "codec/msgpack.h"
#include "endpoints/host.h"
#include "rpc/value.h"

#ifndef TETHER_PYTHON_DIR
#define TETHER_PYTHON_DIR ""
#endif

#define LINE_MAX_BYTES 4096
#define DEFAULT_START_TIMEOUT_USEC (10ull * 1000 * 1000)
#define KILL_GRACE_MS 1000

extern char **environ;

/* The child's first code: tether's package from the path the host gave, then its
 * child side (tether._child) or a fork server (tether._forkserver). */
static const char bootstrap[] =
    "import os, sys, importlib\n"
    "sys.path.insert(0, os.environ.pop('TETHER_CHILD_PATH'))\n"
    "importlib.import_module('tether.' + os.environ.pop('TETHER_CHILD_MAIN')).main()\n";

/* How long a fork server has to start and import tether. */
#define FORKSERVER_START_USEC (10ull * 1000 * 1000)

typedef struct forkserver forkserver;
static void forkserver_unref(forkserver *fs);

typedef struct line_buf {
    uv_pipe_t pipe;
    int stream;
    size_t len;
    char text[LINE_MAX_BYTES + 1];
} line_buf;

struct tether_child {
    atomic_uint refs;
    atomic_uint holds;
    tether__endpoint *ep; /* a reference (not the host: children must not keep it up) */
    forkserver *server;   /* a warm child's fork server; NULL: a process of our own */
    bool is_server;       /* this is a fork server (no tether connection) */
    struct tether_child *server_next; /* in its server's list, guarded by its lock */
    char *name;
    tether_child_output_fn output;
    void *output_userdata;
    tether_child_exit_fn on_exit;
    void *on_exit_userdata;

    /* I/O thread only. */
    uv_process_t process;
    line_buf out, err;
    uv_timer_t kill_timer;
    int open_handles;
    bool kill_timer_open;
    tether__task terminate_task;

    pthread_mutex_t lock;
    pthread_cond_t changed;
    int64_t pid;
    bool connected, exited; /* guarded by lock */
    int status;             /* guarded by lock, once exited */
    bool terminating;       /* guarded by lock */
    tether_conn *conn;      /* a reference, set before the child can connect */
    tether_object *root;    /* once started */
    tether__work exit_work;
};

/* ---- lifetime ------------------------------------------------------------------------ */

static void
hold(tether_child *child)
{
    atomic_fetch_add_explicit(&child->holds, 1, memory_order_relaxed);
}

static void
release(tether_child *child)
{
    if (atomic_fetch_sub_explicit(&child->holds, 1, memory_order_acq_rel) != 1) {
        return;
    }
    tether_object_unref(child->root);
    tether_conn_unref(child->conn);
    pthread_cond_destroy(&child->changed);
    pthread_mutex_destroy(&child->lock);
    tether__free(child->name);
    tether__endpoint_unref(child->ep);
    if (child->server) {
        forkserver_unref(child->server);
    }
    tether__free(child);
}

tether_child *
tether_child_ref(tether_child *child)
{
    if (child) {
        atomic_fetch_add_explicit(&child->refs, 1, memory_order_relaxed);
    }
    return child;
}

tether_child *
tether_child_unref(tether_child *child)
{
    if (child && atomic_fetch_sub_explicit(&child->refs, 1, memory_order_acq_rel) == 1) {
        tether_child_terminate(child); /* nobody can reach it any more */
        release(child);
    }
    return NULL;
}

int64_t
tether_child_get_pid(const tether_child *child)
{
    return child ? child->pid : 0;
}

tether_conn *
tether_child_get_conn(const tether_child *child)
{
    return child ? child->conn : NULL;
}

tether_object *
tether_child_get_root(const tether_child *child)
{
    return child ? child->root : NULL;
}

/* ---- the I/O side -------------------------------------------------------------------- */

static tether_child *
child_of_line(line_buf *b)
{
    return b->stream == TETHER_CHILD_STDOUT
               ? (tether_child *)((char *)b - offsetof(tether_child, out))
               : (tether_child *)((char *)b - offsetof(tether_child, err));
}

static void
handle_closed(tether_child *child)
{
    if (--child->open_handles == 0) {
        release(child); /* the I/O side's hold */
    }
}

/* The process handle and the kill timer carry the child; the pipes their line_buf. */
static void
on_handle_closed(uv_handle_t *handle)
{
    handle_closed(handle->data);
}

static void
on_pipe_closed(uv_handle_t *handle)
{
    handle_closed(child_of_line(handle->data));
}

static void
emit_line(tether_child *child, line_buf *b)
{
    b->text[b->len] = '\0';
    if (child->output) {
        child->output(child->output_userdata, child, b->stream, b->text);
    } else {
        tether__log(child->ep, b->stream == TETHER_CHILD_STDERR ? TETHER_LOG_WARNING
                                                                 : TETHER_LOG_INFO,
                    "[%s pid %lld] %s", child->name, (long long)child->pid, b->text);
    }
    b->len = 0;
}

static void
on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    static _Thread_local char chunk[16384]; /* the I/O thread's; consumed before the next */
    (void)handle;
    *buf = uv_buf_init(chunk, sizeof(chunk));
}

static void
on_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    line_buf *b = stream->data;
    tether_child *child = child_of_line(b);
    if (n < 0) {
        if (b->len > 0) {
            emit_line(child, b); /* the last line had no newline */
        }
        uv_close((uv_handle_t *)stream, on_pipe_closed);
        return;
    }
    /* Lines are bounded: a child printing megabytes costs log lines, not memory. */
    for (ssize_t i = 0; i < n; i++) {
        char c = buf->base[i];
        if (c == '\n') {
            emit_line(child, b);
        } else {
            b->text[b->len++] = c;
            if (b->len == LINE_MAX_BYTES) {
                emit_line(child, b);
            }
        }
    }
}

static void
run_exit_notice(tether__work *work)
{
    tether_child *child = (tether_child *)((char *)work - offsetof(tether_child, exit_work));
    pthread_mutex_lock(&child->lock);
    int status = child->status;
    pthread_mutex_unlock(&child->lock);
    child->on_exit(child->on_exit_userdata, child, status);
    release(child);
}

static void
discard_exit_notice(tether__work *work)
{
    release((tether_child *)((char *)work - offsetof(tether_child, exit_work)));
}

static void forkserver_gone(forkserver *fs);

/* The child's process is gone (I/O thread): from libuv, or its fork server's notice. */
static void
child_exited(tether_child *child, int status)
{
    pthread_mutex_lock(&child->lock);
    bool already = child->exited;
    child->exited = true;
    child->status = status;
    pthread_cond_broadcast(&child->changed);
    pthread_mutex_unlock(&child->lock);
    if (already) {
        return;
    }
    tether__log(child->ep, status == 0 ? TETHER_LOG_INFO : TETHER_LOG_NOTICE,
                "%s %s (pid %lld) exited: %s %d", child->is_server ? "fork server" : "child",
                child->name, (long long)child->pid, status < 0 ? "signal" : "status",
                status < 0 ? -status : status);
    /* Its connection ends with it, whatever state the child left it in. */
    if (child->conn) {
        tether__conn_fail(child->conn, -ECONNRESET, "the child process exited");
    }
    if (child->kill_timer_open) {
        child->kill_timer_open = false;
        uv_close((uv_handle_t *)&child->kill_timer, on_handle_closed);
    }
    /* Told at dispatch while the host is there; a stopped host dispatches no more. */
    pthread_rwlock_rdlock(&child->ep->owner_lock);
    bool owned = child->ep->owner != NULL;
    pthread_rwlock_unlock(&child->ep->owner_lock);
    if (child->on_exit && owned) {
        hold(child);
        child->exit_work.run = run_exit_notice;
        child->exit_work.discard = discard_exit_notice;
        tether__mainq_push(child->ep->mainq, &child->ep->objects_lane, &child->exit_work);
    }
}

static void
on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal)
{
    tether_child *child = process->data;
    child_exited(child, term_signal ? -term_signal : (int)exit_status);
    uv_close((uv_handle_t *)process, on_handle_closed);
}

/* A signal to the child: through libuv for our own process, by pid for a warm child
 * (its fork server reaps it; until the server reports the exit, the pid is its). */
static void
signal_child(tether_child *child, int signum)
{
    if (child->server) {
        kill((pid_t)child->pid, signum);
    } else {
        uv_process_kill(&child->process, signum);
    }
}

static void
on_kill_timer(uv_timer_t *timer)
{
    tether_child *child = timer->data;
    signal_child(child, SIGKILL); /* it ignored SIGTERM for a second */
}

static void
run_terminate(tether__task *task)
{
    tether_child *child = (tether_child *)((char *)task - offsetof(tether_child, terminate_task));
    pthread_mutex_lock(&child->lock);
    bool exited = child->exited;
    pthread_mutex_unlock(&child->lock);
    /* Before on_exit ran the process is not reaped, so its pid is still ours. */
    if (!exited) {
        signal_child(child, SIGTERM);
        if (uv_timer_init(tether__ioloop_uv(child->ep->loop), &child->kill_timer) == 0) {
            child->kill_timer.data = child;
            child->kill_timer_open = true;
            child->open_handles++;
            uv_timer_start(&child->kill_timer, on_kill_timer, KILL_GRACE_MS, 0);
        }
    }
    release(child);
}

int
tether_child_terminate(tether_child *child)
{
    if (!child) {
        return -EINVAL;
    }
    pthread_mutex_lock(&child->lock);
    bool act = !child->exited && !child->terminating;
    child->terminating = true;
    bool exited = child->exited;
    pthread_mutex_unlock(&child->lock);
    if (child->conn) {
        tether_conn_close(child->conn); /* a well-behaved child exits on its own */
    }
    if (act) {
        hold(child);
        child->terminate_task.run = run_terminate;
        tether__ioloop_post(child->ep->loop, &child->terminate_task);
    }
    return exited ? -EALREADY : 0;
}

int
tether_child_wait(tether_child *child, uint64_t timeout_usec, int *ret_status)
{
    if (!child) {
        return -EINVAL;
    }
    uint64_t deadline =
        timeout_usec == TETHER_TIMEOUT_INFINITE ? UINT64_MAX : tether_now_usec() + timeout_usec;
    pthread_mutex_lock(&child->lock);
    while (!child->exited && tether_now_usec() < deadline) {
        tether__cond_wait_until(&child->changed, &child->lock, deadline);
    }
    bool exited = child->exited;
    int status = child->status;
    pthread_mutex_unlock(&child->lock);
    if (!exited) {
        return -ETIMEDOUT;
    }
    if (ret_status) {
        *ret_status = status;
    }
    return 0;
}

/* ---- starting ------------------------------------------------------------------------ */

/* The environment of the child: the host's, then the changes, then the bootstrap's. */
typedef struct env_list {
    char **v;
    size_t n, cap;
} env_list;

static int
env_set(env_list *e, const char *entry)
{
    size_t name_len = strcspn(entry, "=");
    for (size_t i = 0; i < e->n; i++) {
        if (strncmp(e->v[i], entry, name_len) == 0 && e->v[i][name_len] == '=') {
            tether__free(e->v[i]);
            e->v[i] = e->v[--e->n];
            e->v[e->n] = NULL;
            break;
        }
    }
    if (entry[name_len] != '=') {
        return 0; /* "NAME": removed */
    }
    if (e->n + 1 >= e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 64;
        char **v = tether__realloc(e->v, cap * sizeof(*v));
        if (!v) {
            return -ENOMEM;
        }
        e->v = v;
        e->cap = cap;
    }
    if (!(e->v[e->n] = tether__strdup(entry))) {
        return -ENOMEM;
    }
    e->n++;
    e->v[e->n] = NULL;
    return 0;
}

static void
env_done(env_list *e)
{
    for (size_t i = 0; i < e->n; i++) {
        tether__free(e->v[i]);
    }
    tether__free(e->v);
}

static int env_setf(env_list *e, const char *format, ...) TETHER_PRINTF(2, 3);

static int
env_setf(env_list *e, const char *format, ...)
{
    char *entry;
    va_list ap;
    va_start(ap, format);
    int n = vasprintf(&entry, format, ap);
    va_end(ap);
    if (n < 0) {
        return -ENOMEM;
    }
    int r = env_set(e, entry);
    free(entry);
    return r;
}

/* What a child or fork server is started with. */
typedef struct launch {
    const char *executable;
    const char *python_path;
    const char *const *env; /* tether_spawn_options.env */
    const char *cwd;
    const char *name;
    const char *main;       /* "_child" or "_forkserver" */
    int fd3;                /* becomes the process's fd 3 */
} launch;

static int
launch_env(const launch *l, env_list *e)
{
    int r = 0;
    for (char **p = environ; r == 0 && *p; p++) {
        r = env_set(e, *p);
    }
    for (const char *const *p = l->env; r == 0 && p && *p; p++) {
        r = env_set(e, *p);
    }
    r = r < 0 ? r : env_setf(e, "TETHER_CHILD_PATH=%s", l->python_path);
    r = r < 0 ? r : env_setf(e, "TETHER_CHILD_MAIN=%s", l->main);
    r = r < 0 ? r : env_setf(e, "TETHER_CHILD_FD=3");
    r = r < 0 ? r : env_setf(e, "TETHER_CHILD_NAME=%s", l->name);
    r = r < 0 ? r : env_setf(e, "TETHER_CHILD_PARENT=%lld", (long long)getpid());
    return r;
}

static tether_child *
child_new(tether__endpoint *ep, const char *name)
{
    tether_child *child = tether__calloc(1, sizeof(*child));
    if (!child || !(child->name = tether__strdup(name))) {
        tether__free(child);
        return NULL;
    }
    atomic_init(&child->refs, 1);
    atomic_init(&child->holds, 1);
    child->ep = tether__endpoint_ref(ep);
    pthread_mutex_init(&child->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&child->changed, &attr);
    pthread_condattr_destroy(&attr);
    return child;
}

/* Read a child's stdout and stderr from out_fd and err_fd (I/O thread). Takes a hold for
 * the I/O side; the pipes count as two open handles. */
static void
child_watch_output(tether_child *child, int out_fd, int err_fd)
{
    uv_loop_t *loop = tether__ioloop_uv(child->ep->loop);
    child->out.stream = TETHER_CHILD_STDOUT;
    child->err.stream = TETHER_CHILD_STDERR;
    uv_pipe_init(loop, &child->out.pipe, 0);
    uv_pipe_init(loop, &child->err.pipe, 0);
    child->out.pipe.data = &child->out;
    child->err.pipe.data = &child->err;
    hold(child);
    child->open_handles = 2;
    if (out_fd >= 0) {
        uv_pipe_open(&child->out.pipe, out_fd);
        uv_pipe_open(&child->err.pipe, err_fd);
        uv_read_start((uv_stream_t *)&child->out.pipe, on_alloc, on_read);
        uv_read_start((uv_stream_t *)&child->err.pipe, on_alloc, on_read);
    }
}

typedef struct start_arg {
    tether_child *child;
    const launch *launch;
    char **env;
    int r;
} start_arg;

/* On the I/O thread: start the process, its output pipes made by libuv. */
static void
start_process(void *argp)
{
    start_arg *a = argp;
    tether_child *child = a->child;
    const launch *l = a->launch;
    child_watch_output(child, -1, -1);
    uv_stdio_container_t stdio[4] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&child->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&child->err.pipe},
        {.flags = UV_INHERIT_FD, .data.fd = l->fd3},
    };
    char *argv[] = {(char *)l->executable, "-c", (char *)bootstrap, NULL};
    uv_process_options_t options = {
        .exit_cb = on_process_exit,
        .file = l->executable,
        .args = argv,
        .env = a->env,
        .cwd = l->cwd,
        .stdio_count = 4,
        .stdio = stdio,
    };
    child->process.data = child;
    a->r = uv_spawn(tether__ioloop_uv(child->ep->loop), &child->process, &options);
    child->open_handles++;
    if (a->r < 0) {
        /* Nothing runs: marked exited, so that nothing signals pid 0 (our own group). */
        pthread_mutex_lock(&child->lock);
        child->exited = true;
        child->status = -SIGKILL;
        pthread_mutex_unlock(&child->lock);
        uv_close((uv_handle_t *)&child->process, on_handle_closed);
        uv_close((uv_handle_t *)&child->out.pipe, on_pipe_closed);
        uv_close((uv_handle_t *)&child->err.pipe, on_pipe_closed);
        return;
    }
    child->pid = child->process.pid;
    uv_read_start((uv_stream_t *)&child->out.pipe, on_alloc, on_read);
    uv_read_start((uv_stream_t *)&child->err.pipe, on_alloc, on_read);
}

/* Start a process (any thread but the I/O thread). Returns 0 or a negative code. */
static int
start(tether_child *child, const launch *l)
{
    env_list env = {0};
    start_arg a = {.child = child, .launch = l, .r = launch_env(l, &env)};
    if (a.r == 0) {
        a.env = env.v;
        tether__ioloop_run_sync(child->ep->loop, start_process, &a);
    }
    env_done(&env);
    return a.r == UV_ENOENT ? -ENOENT : a.r;
}

static void
on_child_open(void *arg)
{
    tether_child *child = arg;
    pthread_mutex_lock(&child->lock);
    child->connected = true;
    pthread_cond_broadcast(&child->changed);
    pthread_mutex_unlock(&child->lock);
}

/* What __tether_start__ gets: a map saying what to run. */
static int
start_spec(const tether_spawn_options *o, tether_value **ret)
{
    tether__buf b = TETHER__BUF_INIT;
    size_t nargs = 0;
    while (o->args && o->args[nargs]) {
        nargs++;
    }
    int r = tether__mp_array(&b, (uint32_t)nargs);
    for (size_t i = 0; r == 0 && i < nargs; i++) {
        r = tether__mp_str(&b, o->args[i], strlen(o->args[i]));
    }
    tether_value *argv = NULL;
    if (r == 0) {
        r = tether__value_new_copy(tether__buf_head(&b), tether__buf_pending(&b), &argv);
    }
    tether__buf_done(&b);
    if (r < 0) {
        return r;
    }
    const char *kind = o->object_class ? "object"
                       : o->script     ? "script"
                       : o->script_path ? "script_path"
                                        : "module";
    /* Eleven pairs: seven strings, three values, the name. */
    r = tether_value_new(ret, "{ssssssssssssss" "svsvsv" "ss}", "kind", kind, "script",
                         o->script, "script_path", o->script_path, "module", o->module,
                         "module_path", o->module_path, "object_module", o->object_module,
                         "object_class", o->object_class, "object_args", o->object_args,
                         "object_kwargs", o->object_kwargs, "argv", argv, "name",
                         o->name ? o->name : "child");
    tether_value_unref(argv);
    return r;
}

static int fail(tether_error *reterr, int r, const char *format, ...) TETHER_PRINTF(3, 4);

static int
fail(tether_error *reterr, int r, const char *format, ...)
{
    if (reterr) {
        char message[512];
        va_list ap;
        va_start(ap, format);
        vsnprintf(message, sizeof(message), format, ap);
        va_end(ap);
        tether_error_set(reterr, r == -ETIMEDOUT ? "tether.Timeout" : "tether.SpawnError", "%s",
                         message);
    }
    return r;
}

/* Wait until the child connected (or, with want_pid, has a pid) or exited, or the
 * deadline. */
static int
wait_child(tether_child *child, bool want_pid, uint64_t deadline)
{
    pthread_mutex_lock(&child->lock);
    while (!(want_pid ? child->pid != 0 : child->connected) && !child->exited &&
           tether_now_usec() < deadline) {
        tether__cond_wait_until(&child->changed, &child->lock, deadline);
    }
    int r = (want_pid ? child->pid != 0 : child->connected) ? 0
            : child->exited                                  ? -ECONNRESET
                                                             : -ETIMEDOUT;
    pthread_mutex_unlock(&child->lock);
    return r;
}

/* ---- fork servers --------------------------------------------------------------------- */

struct forkserver {
    forkserver *next;     /* in the registry, guarded by registry_lock */
    tether_host *host;    /* not a reference: the registry entry goes when the host stops */
    char *key;            /* executable, package path and environment changes */
    tether_child *proc;   /* the server process */
    int ctl;              /* our end of its control socket */
    uv_poll_t poll;       /* I/O thread */
    bool polling;         /* I/O thread */
    pthread_mutex_t lock;
    pthread_cond_t changed;
    bool ready, gone;           /* guarded by lock */
    tether_child *waiting;      /* guarded by lock: spawned, pid not answered yet, FIFO */
    tether_child *running;      /* guarded by lock: answered, not exited */
    atomic_uint refs;           /* the registry, and each warm child */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static forkserver *registry; /* guarded by registry_lock */

static forkserver *
forkserver_ref(forkserver *fs)
{
    atomic_fetch_add_explicit(&fs->refs, 1, memory_order_relaxed);
    return fs;
}

static void
forkserver_unref(forkserver *fs)
{
    if (atomic_fetch_sub_explicit(&fs->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    tether_child_unref(fs->proc);
    pthread_cond_destroy(&fs->changed);
    pthread_mutex_destroy(&fs->lock);
    tether__free(fs->key);
    tether__free(fs);
}

/* Unlink child from a list of fs. Lock held. */
static void
list_remove(tether_child **list, tether_child *child)
{
    for (tether_child **pp = list; *pp; pp = &(*pp)->server_next) {
        if (*pp == child) {
            *pp = child->server_next;
            return;
        }
    }
}

/* One message of the server (I/O thread). */
static void
forkserver_message(forkserver *fs, const char *text)
{
    long long pid = 0;
    int status = 0;
    if (strncmp(text, "{\"ready\":", 9) == 0) {
        pthread_mutex_lock(&fs->lock);
        fs->ready = true;
        pthread_cond_broadcast(&fs->changed);
        pthread_mutex_unlock(&fs->lock);
        return;
    }
    bool answer = sscanf(text, "{\"pid\": %lld}", &pid) == 1 || strncmp(text, "{\"error\":", 9) == 0;
    if (answer) {
        pthread_mutex_lock(&fs->lock);
        tether_child *child = fs->waiting;
        if (child) {
            fs->waiting = child->server_next;
            if (pid > 0) {
                child->server_next = fs->running;
                fs->running = child;
            }
        }
        pthread_mutex_unlock(&fs->lock);
        if (!child) {
            return;
        }
        if (pid > 0) {
            pthread_mutex_lock(&child->lock);
            child->pid = pid;
            pthread_cond_broadcast(&child->changed);
            pthread_mutex_unlock(&child->lock);
        } else {
            tether__log(child->ep, TETHER_LOG_WARNING, "fork server: %s", text);
            child_exited(child, -SIGKILL);
            release(child); /* out of the server's lists */
        }
        return;
    }
    if (sscanf(text, "{\"exit\": %lld, \"status\": %d}", &pid, &status) == 2) {
        pthread_mutex_lock(&fs->lock);
        tether_child *child = fs->running;
        while (child && child->pid != pid) {
            child = child->server_next;
        }
        if (child) {
            list_remove(&fs->running, child);
        }
        pthread_mutex_unlock(&fs->lock);
        if (child) {
            child_exited(child, status);
            release(child); /* out of the server's lists */
        }
    }
}

static void
on_forkserver_closed(uv_handle_t *handle)
{
    forkserver_unref(handle->data); /* the poll's reference */
}

static void
on_forkserver_readable(uv_poll_t *poll, int status, int events)
{
    (void)events;
    forkserver *fs = poll->data;
    for (;;) {
        char text[512];
        ssize_t n = status < 0 ? 0 : recv(fs->ctl, text, sizeof(text) - 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        if (n <= 0) {
            forkserver_gone(fs);
            return;
        }
        text[n] = '\0';
        forkserver_message(fs, text);
    }
}

/* The server ended (or the host let it go): its children cannot be told apart from
 * the living any more; they exit with their sockets. I/O thread. */
static void
forkserver_gone(forkserver *fs)
{
    pthread_mutex_lock(&fs->lock);
    fs->gone = true;
    tether_child *waiting = fs->waiting, *running = fs->running;
    fs->waiting = fs->running = NULL;
    pthread_cond_broadcast(&fs->changed);
    pthread_mutex_unlock(&fs->lock);
    for (tether_child *c = waiting, *next; c; c = next) {
        next = c->server_next;
        child_exited(c, -SIGKILL);
        release(c);
    }
    for (tether_child *c = running, *next; c; c = next) {
        next = c->server_next;
        child_exited(c, -SIGKILL);
        release(c);
    }
    if (fs->polling) {
        fs->polling = false;
        uv_close((uv_handle_t *)&fs->poll, on_forkserver_closed);
    }
}

static void
start_forkserver_poll(void *arg)
{
    forkserver *fs = arg;
    if (uv_poll_init(tether__ioloop_uv(fs->proc->ep->loop), &fs->poll, fs->ctl) == 0) {
        fs->poll.data = forkserver_ref(fs);
        fs->polling = true;
        uv_poll_start(&fs->poll, UV_READABLE, on_forkserver_readable);
    }
}

static void
stop_forkserver(void *arg)
{
    forkserver_gone(arg);
}

/* The key of a fork server: what makes two warm spawns need different servers. */
static char *
forkserver_key(const char *executable, const char *python_path, const char *const *env)
{
    tether__buf b = TETHER__BUF_INIT;
    int r = tether__buf_append(&b, executable, strlen(executable) + 1);
    r = r < 0 ? r : tether__buf_append(&b, python_path, strlen(python_path) + 1);
    for (const char *const *p = env; r == 0 && p && *p; p++) {
        r = tether__buf_append(&b, *p, strlen(*p) + 1);
    }
    r = r < 0 ? r : tether__buf_append(&b, "", 1);
    char *key = r == 0 ? tether__strndup((const char *)tether__buf_head(&b),
                                         tether__buf_pending(&b))
                       : NULL;
    /* The NULs inside make it a sequence of strings: compare with memcmp of its length. */
    tether__buf_done(&b);
    return key;
}

static size_t
key_len(const char *key)
{
    size_t n = 0;
    while (key[n]) {
        n += strlen(key + n) + 1;
    }
    return n + 1;
}

/* The host's fork server for this launch, started on first use; a new reference. */
static int
forkserver_get(tether_host *host, tether__endpoint *ep, const launch *l, forkserver **ret,
               tether_error *reterr)
{
    char *key = forkserver_key(l->executable, l->python_path, l->env);
    if (!key) {
        return fail(reterr, -ENOMEM, "out of memory");
    }
    size_t klen = key_len(key);
    pthread_mutex_lock(&registry_lock);
    forkserver *fs = registry;
    while (fs && !(fs->host == host && key_len(fs->key) == klen &&
                   memcmp(fs->key, key, klen) == 0 && !fs->gone)) {
        fs = fs->next;
    }
    if (fs) {
        forkserver_ref(fs);
        pthread_mutex_unlock(&registry_lock);
        tether__free(key);
        *ret = fs;
        return 0;
    }
    /* Started under the registry lock: two first warm spawns make one server. */
    fs = tether__calloc(1, sizeof(*fs));
    int pair[2] = {-1, -1};
    int r = -ENOMEM;
    if (fs && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) == 0) {
        fs->key = key;
        key = NULL;
        fs->host = host;
        fs->ctl = pair[0];
        atomic_init(&fs->refs, 1);
        pthread_mutex_init(&fs->lock, NULL);
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&fs->changed, &attr);
        pthread_condattr_destroy(&attr);
        fs->proc = child_new(ep, "tether-forkserver");
        r = fs->proc ? 0 : -ENOMEM;
        if (r == 0) {
            fs->proc->is_server = true;
            launch server = *l;
            server.main = "_forkserver";
            server.name = "tether-forkserver";
            server.cwd = NULL;
            server.fd3 = pair[1];
            r = start(fs->proc, &server);
        }
        close(pair[1]);
    } else if (fs) {
        r = -errno;
    }
    if (r == 0) {
        tether__ioloop_run_sync(ep->loop, start_forkserver_poll, fs);
        uint64_t deadline = tether_now_usec() + FORKSERVER_START_USEC;
        pthread_mutex_lock(&fs->lock);
        while (!fs->ready && !fs->gone && tether_now_usec() < deadline) {
            tether__cond_wait_until(&fs->changed, &fs->lock, deadline);
        }
        r = fs->ready ? 0 : fs->gone ? -ECONNRESET : -ETIMEDOUT;
        pthread_mutex_unlock(&fs->lock);
    }
    if (r == 0) {
        fs->next = registry;
        registry = forkserver_ref(fs);
        tether__log(ep, TETHER_LOG_INFO, "fork server (pid %lld) ready: %s",
                    (long long)fs->proc->pid, l->executable);
    }
    pthread_mutex_unlock(&registry_lock);
    tether__free(key);
    if (r < 0) {
        if (fs) {
            if (fs->proc) {
                tether__ioloop_run_sync(ep->loop, stop_forkserver, fs);
            }
            close(fs->ctl);
            forkserver_unref(fs);
        }
        return fail(reterr, r, "cannot start a fork server of %s: %s", l->executable,
                    tether_strerror(r));
    }
    *ret = fs;
    return 0;
}

/* s as a JSON string (NULL: null) in out, truncated to fit; control characters,
 * quotes and backslashes escaped. */
static void
json_string(char *out, size_t size, const char *s)
{
    if (!s) {
        snprintf(out, size, "null");
        return;
    }
    size_t k = 0;
    out[k++] = '"';
    for (; *s && k + 8 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[k++] = '\\';
            out[k++] = (char)c;
        } else if (c < 0x20) {
            k += (size_t)snprintf(out + k, size - k, "\\u%04x", c);
        } else {
            out[k++] = (char)c;
        }
    }
    out[k++] = '"';
    out[k] = '\0';
}

typedef struct fork_arg {
    forkserver *fs;
    tether_child *child;
    const char *cwd;
    int fds[3];
    int out_fd, err_fd;
    int r;
} fork_arg;

/* On the I/O thread: watch the child's output, queue it for its pid, send the request. */
static void
send_fork_request(void *argp)
{
    fork_arg *a = argp;
    child_watch_output(a->child, a->out_fd, a->err_fd);
    char text[8192], cwd[4096], name[512];
    json_string(cwd, sizeof(cwd), a->cwd);
    json_string(name, sizeof(name), a->child->name);
    int n = snprintf(text, sizeof(text), "{\"cwd\": %s, \"name\": %s}", cwd, name);
    char control[CMSG_SPACE(sizeof(a->fds))];
    memset(control, 0, sizeof(control));
    struct iovec iov = {text, (size_t)n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof(control)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(a->fds));
    memcpy(CMSG_DATA(cm), a->fds, sizeof(a->fds));
    pthread_mutex_lock(&a->fs->lock);
    bool gone = a->fs->gone;
    if (!gone) {
        tether_child **tail = &a->fs->waiting;
        while (*tail) {
            tail = &(*tail)->server_next;
        }
        *tail = a->child;
        hold(a->child); /* while in the server's lists */
    }
    pthread_mutex_unlock(&a->fs->lock);
    a->r = gone ? -ECONNRESET : sendmsg(a->fs->ctl, &msg, MSG_NOSIGNAL) < 0 ? -errno : 0;
    if (a->r < 0 && !gone) {
        pthread_mutex_lock(&a->fs->lock);
        list_remove(&a->fs->waiting, a->child);
        pthread_mutex_unlock(&a->fs->lock);
        release(a->child);
    }
    if (a->r < 0) {
        child_exited(a->child, -SIGKILL);
    }
}

/* Fork a child from fs, connected through child_fd. */
static int
fork_child(forkserver *fs, tether_child *child, int child_fd, const char *cwd)
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        return -errno;
    }
    if (pipe2(err, O_CLOEXEC) < 0) {
        int r = -errno;
        close(out[0]);
        close(out[1]);
        return r;
    }
    child->server = forkserver_ref(fs);
    fork_arg a = {.fs = fs, .child = child, .cwd = cwd, .fds = {child_fd, out[1], err[1]},
                  .out_fd = out[0], .err_fd = err[0]};
    tether__ioloop_run_sync(child->ep->loop, send_fork_request, &a);
    close(out[1]); /* the server has its own copies now */
    close(err[1]);
    return a.r;
}

/* ---- spawning ------------------------------------------------------------------------ */

int
tether_host_spawn(tether_host *host, const tether_spawn_options *o, tether_child **ret_child,
                  tether_error *reterr)
{
    if (!ret_child) {
        return -EINVAL;
    }
    *ret_child = NULL;
    /* One thing to run; an object's class may come from a script's globals. */
    int sources = o ? !!o->script + !!o->script_path + !!o->module : 0;
    bool valid = o && (o->object_class ? !o->module && sources <= 1 &&
                                             (o->object_module || sources == 1)
                                       : sources == 1 && (!o->module_path || o->module));
    if (!host || !valid) {
        return fail(reterr, -EINVAL, "give exactly one of script, script_path, module and "
                                     "object_class (object_class may come with a script)");
    }
    tether__endpoint *ep = tether__host_endpoint(host);
    if (tether__ioloop_in_thread(ep->loop)) {
        return fail(reterr, -EDEADLK, "spawning blocks: not from an IO handler");
    }
    launch l = {
        .executable = o->executable ? o->executable : getenv("TETHER_PYTHON"),
        .python_path = o->python_path ? o->python_path : getenv("TETHER_PYTHONPATH"),
        .env = o->env,
        .cwd = o->cwd,
        .name = o->name ? o->name : "child",
        .main = "_child",
    };
    if (!l.executable || !*l.executable) {
        l.executable = "python3";
    }
    if (!l.python_path || !*l.python_path) {
        l.python_path = TETHER_PYTHON_DIR;
    }
    uint64_t deadline = tether_now_usec() +
                        (o->start_timeout_usec ? o->start_timeout_usec : DEFAULT_START_TIMEOUT_USEC);

    forkserver *fs = NULL;
    if (o->warm) {
        int r = forkserver_get(host, ep, &l, &fs, reterr);
        if (r < 0) {
            return r;
        }
    }
    tether_child *child = child_new(ep, l.name);
    if (!child) {
        if (fs) {
            forkserver_unref(fs);
        }
        return fail(reterr, -ENOMEM, "out of memory");
    }
    child->output = o->output;
    child->output_userdata = o->output_userdata;
    child->on_exit = o->on_exit;
    child->on_exit_userdata = o->on_exit_userdata;

    int pair[2];
    int r = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0 ? -errno : 0;
    if (r == 0) {
        r = tether__host_adopt_child(host, pair[0], on_child_open, child, &child->conn);
        if (r < 0) {
            close(pair[0]);
        }
        if (r == 0) {
            l.fd3 = pair[1];
            r = fs ? fork_child(fs, child, pair[1], o->cwd) : start(child, &l);
        }
        close(pair[1]);
    }
    if (fs) {
        forkserver_unref(fs); /* the child holds its own reference */
    }
    if (r < 0) {
        tether_child_unref(child);
        return fail(reterr, r, "cannot start %s: %s", l.executable, tether_strerror(r));
    }
    if (fs && (r = wait_child(child, true, deadline)) < 0) {
        tether_child_unref(child);
        return fail(reterr, r, "the fork server did not start a child in time");
    }
    tether__log(ep, TETHER_LOG_INFO, "spawned %s (pid %lld%s): %s", l.name,
                (long long)child->pid, fs ? ", warm" : "", l.executable);

    r = wait_child(child, false, deadline);
    if (r < 0) {
        tether_child_unref(child);
        return fail(reterr, r,
                    r == -ETIMEDOUT ? "%s did not connect in time"
                                    : "%s exited before connecting (not a Python 3.10+ "
                                      "interpreter, or tether could not be imported from %s)",
                    l.executable, r == -ETIMEDOUT ? "" : l.python_path);
    }
    tether_value *spec = NULL, *result = NULL;
    r = start_spec(o, &spec);
    if (r == 0) {
        uint64_t now = tether_now_usec();
        tether_call_options call = {.deadline_usec = deadline,
                                    .timeout_usec = deadline > now ? deadline - now : 1};
        tether_value *args = NULL;
        r = tether_value_new(&args, "[v]", spec);
        if (r == 0) {
            r = tether_conn_call_values(child->conn, "__tether_start__", args, NULL, &call, &result,
                                        reterr);
        }
        tether_value_unref(args);
    }
    tether_value_unref(spec);
    if (r == 0 && (r = tether_value_read(result, reterr, "o", &child->root)) == 0 && !child->root) {
        r = fail(reterr, -EPROTO, "the child answered no root object");
    }
    tether_value_unref(result);
    if (r < 0) {
        tether_child_unref(child);
        return r;
    }
    *ret_child = child;
    return 0;
}

void
tether__spawn_host_stopped(tether_host *host)
{
    /* The host's fork servers end: their control sockets close, and they exit. */
    pthread_mutex_lock(&registry_lock);
    for (forkserver **pp = &registry; *pp;) {
        forkserver *fs = *pp;
        if (fs->host != host) {
            pp = &fs->next;
            continue;
        }
        *pp = fs->next;
        tether__ioloop_run_sync(fs->proc->ep->loop, stop_forkserver, fs);
        shutdown(fs->ctl, SHUT_RDWR);
        tether_child_terminate(fs->proc);
        forkserver_unref(fs);
    }
    pthread_mutex_unlock(&registry_lock);
}
