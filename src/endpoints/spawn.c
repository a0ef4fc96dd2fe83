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
 * and package path (forkserver.c), whose process is started here like a child with its
 * control socket as fd 3. A request hands it the child's socket end, stdout and stderr;
 * the server forks, answers the pid, and reports the child's exit, which reach the child
 * through its tether__fork_slot. Everything after the pid (connect, __tether_start__,
 * output, terminate) is the same for both kinds; a warm child is signalled by pid, and
 * only once it has one.
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
#include <sys/socket.h>
#include <unistd.h>

#include "codec/msgpack.h"
#include "endpoints/forkserver.h"
#include "endpoints/host.h"
#include "platform/platform.h"
#include "rpc/value.h"
#include "util/alloc.h"
#include "util/condwait.h"
#include "util/error.h"

#ifndef TETHER_PYTHON_DIR
#define TETHER_PYTHON_DIR ""
#endif

#define LINE_MAX_BYTES 4096
#define DEFAULT_START_TIMEOUT_USEC (10ull * 1000 * 1000)
#define KILL_GRACE_MS 1000

extern char **environ;

int
tether_process_set_parent_death_signal(int signum)
{
    return tether__process_set_parent_death_signal(signum);
}

int
tether_process_set_name(const char *name)
{
    return name ? tether__process_set_name(name) : -EINVAL;
}

/* The child's first code: tether's package from the path the host gave, then its
 * child side (tether._child) or a fork server (tether._forkserver). */
static const char bootstrap[] =
    "import os, sys, importlib\n"
    "sys.path.insert(0, os.environ.pop('TETHER_CHILD_PATH'))\n"
    "importlib.import_module('tether.' + os.environ.pop('TETHER_CHILD_MAIN')).main()\n";

typedef struct line_buf {
    uv_pipe_t pipe;
    int stream;
    size_t len;
    char text[LINE_MAX_BYTES + 1];
} line_buf;

struct tether_child {
    atomic_uint refs;
    atomic_uint holds;
    tether__endpoint *ep;       /* a reference (not the host: children must not keep it up) */
    tether__forkserver *server; /* a warm child's fork server; NULL: a process of our own */
    tether__fork_slot slot;     /* a warm child, as its server follows it */
    bool is_server;             /* this is a fork server (no tether connection) */
    char *name;
    tether_child_output_fn output;
    void *output_userdata;
    tether_child_exit_fn on_exit;
    void *on_exit_userdata;

    /* I/O thread only. */
    uv_process_t process; /* started by libuv (the portable build) */
    uv_poll_t exit_poll;  /* started by the platform layer: its pidfd, readable at exit */
    int pidfd;            /* -1 unless started by the platform layer */
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
    int start_error;        /* guarded by lock: why its fork server gave it up */
    char *start_why;        /* guarded by lock: the same in words */
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
    tether__free(child->start_why);
    tether__endpoint_unref(child->ep);
    if (child->server) {
        tether__forkserver_unref(child->server);
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
        tether__log(child->ep,
                    b->stream == TETHER_CHILD_STDERR ? TETHER_LOG_WARNING : TETHER_LOG_INFO,
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
on_exit_poll_closed(uv_handle_t *handle)
{
    tether_child *child = handle->data;
    close(child->pidfd);
    child->pidfd = -1;
    handle_closed(child);
}

/* The pidfd of a process the platform layer started is readable: it exited. */
static void
on_pidfd(uv_poll_t *poll, int status, int events)
{
    (void)events;
    tether_child *child = poll->data;
    int exit_status = -SIGKILL;
    int r = status < 0 ? status : tether__process_reap(child->pidfd, &exit_status);
    if (r == -EAGAIN) {
        return;
    }
    uv_poll_stop(poll);
    child_exited(child, exit_status);
    uv_close((uv_handle_t *)poll, on_exit_poll_closed);
}

static void
on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal)
{
    tether_child *child = process->data;
    child_exited(child, term_signal ? -term_signal : (int)exit_status);
    uv_close((uv_handle_t *)process, on_handle_closed);
}

/* A signal to the child: through libuv for our own process, by pid for a warm child
 * (its fork server reaps it; until the server reports the exit, the pid is its). A warm
 * child without a pid yet is left alone: kill(0) would signal our own process group. The
 * pid is set on this thread too. */
static void
signal_child(tether_child *child, int signum)
{
    if (child->server) {
        if (child->pid > 0) {
            kill((pid_t)child->pid, signum);
        }
    } else if (child->pidfd >= 0) {
        tether__process_signal(child->pidfd, signum);
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
    const char *main; /* "_child" or "_forkserver" */
    int fd3;          /* becomes the process's fd 3 */
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
    child->pidfd = -1;
    child->ep = tether__endpoint_ref(ep);
    pthread_mutex_init(&child->lock, NULL);
    tether__cond_init_monotonic(&child->changed);
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

/* On the I/O thread: start the process through the platform layer, without copying
 * this one (platform.h); true if it could say, whatever the outcome (in a->r). */
static bool
start_process_platform(start_arg *a, char *argv[])
{
    tether_child *child = a->child;
    const launch *l = a->launch;
    int out_fd, err_fd;
    int64_t pid;
    int pidfd =
        tether__process_spawn(l->executable, argv, a->env, l->cwd, l->fd3, &out_fd, &err_fd, &pid);
    if (pidfd == -ENOSYS) {
        return false;
    }
    if (pidfd < 0) {
        /* Nothing runs: marked exited, so that nothing signals pid 0 (our own group). */
        a->r = pidfd;
        pthread_mutex_lock(&child->lock);
        child->exited = true;
        child->status = -SIGKILL;
        pthread_mutex_unlock(&child->lock);
        return true;
    }
    child->pidfd = pidfd;
    child->pid = pid;
    child_watch_output(child, out_fd, err_fd);
    uv_poll_init(tether__ioloop_uv(child->ep->loop), &child->exit_poll, pidfd);
    child->exit_poll.data = child;
    child->open_handles++;
    uv_poll_start(&child->exit_poll, UV_READABLE, on_pidfd);
    a->r = 0;
    return true;
}

/* On the I/O thread: start the process; by libuv (its output pipes made by libuv) where
 * the platform layer cannot. */
static void
start_process(void *argp)
{
    start_arg *a = argp;
    tether_child *child = a->child;
    const launch *l = a->launch;
    char *argv[] = {(char *)l->executable, "-c", (char *)bootstrap, NULL};
    if (start_process_platform(a, argv)) {
        return;
    }
    child_watch_output(child, -1, -1);
    uv_stdio_container_t stdio[4] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&child->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE,
         .data.stream = (uv_stream_t *)&child->err.pipe},
        {.flags = UV_INHERIT_FD, .data.fd = l->fd3},
    };
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
    const char *kind = o->object_class  ? "object"
                       : o->script      ? "script"
                       : o->script_path ? "script_path"
                                        : "module";
    /* Eleven pairs: seven strings, three values, the name. */
    r = tether_value_new(ret,
                         "{ssssssssssssss"
                         "svsvsv"
                         "ss}",
                         "kind", kind, "script", o->script, "script_path", o->script_path, "module",
                         o->module, "module_path", o->module_path, "object_module",
                         o->object_module, "object_class", o->object_class, "object_args",
                         o->object_args, "object_kwargs", o->object_kwargs, "argv", argv, "name",
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
        tether_error_set(reterr, r == -ETIMEDOUT ? TETHER__ERR_TIMEOUT : TETHER__ERR_SPAWN, "%s",
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
            : !child->exited                                ? -ETIMEDOUT
            : child->start_error                            ? child->start_error
                                                            : -ECONNRESET;
    pthread_mutex_unlock(&child->lock);
    return r;
}

/* Starting child failed with r: say why, in its fork server's words if it gave some. */
static int
start_failed(tether_child *child, int r, tether_error *reterr, const char *message)
{
    pthread_mutex_lock(&child->lock);
    r = fail(reterr, r, "%s", child->start_why ? child->start_why : message);
    pthread_mutex_unlock(&child->lock);
    return r;
}

/* ---- warm children ---------------------------------------------------------------------- */

static tether_child *
child_of_slot(tether__fork_slot *slot)
{
    return (tether_child *)((char *)slot - offsetof(tether_child, slot));
}

/* The fork server answered the child's pid (I/O thread). */
static void
on_forked(tether__fork_slot *slot)
{
    tether_child *child = child_of_slot(slot);
    pthread_mutex_lock(&child->lock);
    child->pid = slot->pid;
    pthread_cond_broadcast(&child->changed);
    pthread_mutex_unlock(&child->lock);
}

/* The fork server is done with the child (I/O thread): it exited, or never started and
 * then why tells the spawn. */
static void
on_fork_ended(tether__fork_slot *slot, int status, int r, const char *why)
{
    tether_child *child = child_of_slot(slot);
    if (r < 0) {
        pthread_mutex_lock(&child->lock);
        if (!child->start_why) {
            child->start_error = r;
            child->start_why = tether__strdup(why);
        }
        pthread_mutex_unlock(&child->lock);
    }
    child_exited(child, status);
    release(child); /* the server's hold */
}

/* A fork server's process: started like a child, with the control socket as fd 3. */
static int
start_server_process(const tether__forkserver_spec *spec, int fd, tether_child **ret_proc)
{
    tether_child *proc = child_new(spec->ep, "tether-forkserver");
    if (!proc) {
        return -ENOMEM;
    }
    proc->is_server = true;
    launch server = *(const launch *)spec->start_arg;
    server.main = "_forkserver";
    server.name = "tether-forkserver";
    server.cwd = NULL;
    server.fd3 = fd;
    int r = start(proc, &server);
    if (r < 0) {
        tether_child_unref(proc);
        return r;
    }
    *ret_proc = proc;
    return 0;
}

typedef struct fork_arg {
    tether__forkserver *fs;
    tether_child *child;
    const char *cwd;
    int fds[3];
    int out_fd, err_fd;
    int r;
} fork_arg;

/* On the I/O thread: watch the child's output, then ask for it. */
static void
send_fork_request(void *argp)
{
    fork_arg *a = argp;
    tether_child *child = a->child;
    child_watch_output(child, a->out_fd, a->err_fd);
    child->slot.forked = on_forked;
    child->slot.ended = on_fork_ended;
    hold(child); /* the server's, until it ends the slot */
    a->r = tether__forkserver_fork(a->fs, &child->slot, a->fds, a->cwd, child->name);
    if (a->r < 0) {
        child_exited(child, -SIGKILL); /* no pid: nothing will be signalled */
        release(child);
    }
}

/* Fork a child from fs, connected through child_fd. */
static int
fork_child(tether__forkserver *fs, tether_child *child, int child_fd, const char *cwd)
{
    int out[2], err[2];
    int r = tether__pipe_open(out);
    if (r < 0) {
        return r;
    }
    if ((r = tether__pipe_open(err)) < 0) {
        close(out[0]);
        close(out[1]);
        return r;
    }
    child->server = tether__forkserver_ref(fs);
    fork_arg a = {.fs = fs,
                  .child = child,
                  .cwd = cwd,
                  .fds = {child_fd, out[1], err[1]},
                  .out_fd = out[0],
                  .err_fd = err[0]};
    tether__ioloop_run_sync(child->ep->loop, send_fork_request, &a);
    close(out[1]); /* the server has its own copies now */
    close(err[1]);
    return a.r;
}

/* ---- spawning ------------------------------------------------------------------------ */

/* What o launches: its interpreter and package path, or the defaults. */
static launch
launch_of(const tether_spawn_options *o)
{
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
    return l;
}

/* Start child's process (forked by fs when warm) and wait until it connected. */
static int
child_begin(tether_host *host, tether_child *child, launch *l, tether__forkserver *fs,
            uint64_t deadline, tether_error *reterr)
{
    int pair[2];
    int r = tether__socket_pair(SOCK_STREAM, pair);
    if (r == 0) {
        r = tether__host_adopt_child(host, pair[0], on_child_open, child, &child->conn);
        if (r < 0) {
            close(pair[0]);
        }
        if (r == 0) {
            l->fd3 = pair[1];
            r = fs ? fork_child(fs, child, pair[1], l->cwd) : start(child, l);
        }
        close(pair[1]);
    }
    if (r < 0) {
        /* The system's word for it: "no such file or directory" is about the program. */
        return fail(reterr, r, "cannot start %s: %s", l->executable, uv_strerror(r));
    }
    if (fs && (r = wait_child(child, true, deadline)) < 0) {
        return start_failed(child, r, reterr,
                            r == -ETIMEDOUT ? "the fork server did not start a child in time"
                                            : "the fork server ended before it started a child");
    }
    tether__log(child->ep, TETHER_LOG_INFO, "spawned %s (pid %lld%s): %s", l->name,
                (long long)child->pid, fs ? ", warm" : "", l->executable);
    r = wait_child(child, false, deadline);
    if (r < 0) {
        char message[512];
        if (r == -ETIMEDOUT) {
            snprintf(message, sizeof(message), "%s did not connect in time", l->executable);
        } else {
            snprintf(message, sizeof(message),
                     "%s exited before connecting (not a Python 3.10+ interpreter, or tether "
                     "could not be imported from %s)",
                     l->executable, l->python_path);
        }
        return start_failed(child, r, reterr, message);
    }
    return 0;
}

/* Call the child's __tether_start__ with what o runs; its root object goes to the child. */
static int
child_call_start(tether_child *child, const tether_spawn_options *o, uint64_t deadline,
                 tether_error *reterr)
{
    tether_value *spec = NULL, *result = NULL;
    int r = start_spec(o, &spec);
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
    return r;
}

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
    bool valid =
        o && (o->object_class ? !o->module && sources <= 1 && (o->object_module || sources == 1)
                              : sources == 1 && (!o->module_path || o->module));
    if (!host || !valid) {
        return fail(reterr, -EINVAL,
                    "give exactly one of script, script_path, module and "
                    "object_class (object_class may come with a script)");
    }
    tether__endpoint *ep = tether__host_endpoint(host);
    if (tether__ioloop_in_thread(ep->loop)) {
        return fail(reterr, -EDEADLK, "spawning blocks: not from an IO handler");
    }
    launch l = launch_of(o);
    uint64_t deadline = tether_now_usec() + (o->start_timeout_usec ? o->start_timeout_usec
                                                                   : DEFAULT_START_TIMEOUT_USEC);
    tether__forkserver *fs = NULL;
    if (o->warm) {
        tether__forkserver_spec spec = {.host = host,
                                        .ep = ep,
                                        .executable = l.executable,
                                        .python_path = l.python_path,
                                        .env = l.env,
                                        .start = start_server_process,
                                        .start_arg = &l};
        char why[256];
        int r = tether__forkserver_get(&spec, &fs, why, sizeof(why));
        if (r < 0) {
            return fail(reterr, r, "cannot start a fork server of %s: %s", l.executable, why);
        }
    }
    tether_child *child = child_new(ep, l.name);
    if (child) {
        child->output = o->output;
        child->output_userdata = o->output_userdata;
        child->on_exit = o->on_exit;
        child->on_exit_userdata = o->on_exit_userdata;
    }
    int r = child ? child_begin(host, child, &l, fs, deadline, reterr)
                  : fail(reterr, -ENOMEM, "out of memory");
    if (fs) {
        tether__forkserver_unref(fs); /* a warm child holds its own reference */
    }
    r = r < 0 ? r : child_call_start(child, o, deadline, reterr);
    if (r < 0) {
        tether_child_unref(child);
        return r;
    }
    *ret_child = child;
    return 0;
}
