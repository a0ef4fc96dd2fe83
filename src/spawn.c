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

#include "alloc.h"
#include "condwait.h"
#include "conn.h"
#include "value.h"

#ifndef TETHER_PYTHON_DIR
#define TETHER_PYTHON_DIR ""
#endif

#define LINE_MAX_BYTES 4096
#define DEFAULT_START_TIMEOUT_USEC (10ull * 1000 * 1000)
#define KILL_GRACE_MS 1000

extern char **environ;

/* The child's first code: tether's package from the path the host gave, then its
 * child side. Nothing else is imported before tether._child takes over. */
static const char bootstrap[] = "import os, sys\n"
                                "sys.path.insert(0, os.environ.pop('TETHER_CHILD_PATH'))\n"
                                "from tether import _child\n"
                                "_child.main()\n";

typedef struct line_buf {
    uv_pipe_t pipe;
    int stream;
    size_t len;
    char text[LINE_MAX_BYTES + 1];
} line_buf;

struct tether_child {
    atomic_uint refs;
    atomic_uint holds;
    tether_host *host; /* a reference */
    tether__endpoint *ep;
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
    tether_host_unref(child->host);
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

static void
on_process_exit(uv_process_t *process, int64_t exit_status, int term_signal)
{
    tether_child *child = process->data;
    int status = term_signal ? -term_signal : (int)exit_status;
    pthread_mutex_lock(&child->lock);
    child->exited = true;
    child->status = status;
    pthread_cond_broadcast(&child->changed);
    pthread_mutex_unlock(&child->lock);
    tether__log(child->ep, status == 0 ? TETHER_LOG_INFO : TETHER_LOG_NOTICE,
                "child %s (pid %lld) exited: %s %d", child->name, (long long)child->pid,
                status < 0 ? "signal" : "status", status < 0 ? -status : status);
    /* Its connection ends with it, whatever state the child left it in. */
    tether__conn_fail(child->conn, -ECONNRESET, "the child process exited");
    if (child->kill_timer_open) {
        child->kill_timer_open = false;
        uv_close((uv_handle_t *)&child->kill_timer, on_handle_closed);
    }
    uv_close((uv_handle_t *)process, on_handle_closed);
    if (child->on_exit) {
        hold(child);
        child->exit_work.run = run_exit_notice;
        child->exit_work.discard = discard_exit_notice;
        tether__mainq_push(child->ep->mainq, &child->ep->objects_lane, &child->exit_work);
    }
}

static void
on_kill_timer(uv_timer_t *timer)
{
    tether_child *child = timer->data;
    uv_process_kill(&child->process, SIGKILL); /* it ignored SIGTERM for a second */
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
        uv_process_kill(&child->process, SIGTERM);
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

static int
env_setf(env_list *e, const char *format, ...) TETHER_PRINTF(2, 3);

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

static int
child_env(const tether_spawn_options *o, const char *python_path, const char *name,
          env_list *e)
{
    int r = 0;
    for (char **p = environ; r == 0 && *p; p++) {
        r = env_set(e, *p);
    }
    for (const char *const *p = o->env; r == 0 && p && *p; p++) {
        r = env_set(e, *p);
    }
    if (r == 0) {
        r = env_setf(e, "TETHER_CHILD_PATH=%s", python_path);
    }
    if (r == 0) {
        r = env_setf(e, "TETHER_CHILD_FD=3");
    }
    if (r == 0) {
        r = env_setf(e, "TETHER_CHILD_NAME=%s", name);
    }
    if (r == 0) {
        r = env_setf(e, "TETHER_CHILD_PARENT=%lld", (long long)getpid());
    }
    return r;
}

typedef struct start_arg {
    tether_child *child;
    uv_process_options_t options;
    int r;
} start_arg;

/* On the I/O thread: start the process and its pipes. */
static void
start_process(void *argp)
{
    start_arg *a = argp;
    tether_child *child = a->child;
    uv_loop_t *loop = tether__ioloop_uv(child->ep->loop);
    child->out.stream = TETHER_CHILD_STDOUT;
    child->err.stream = TETHER_CHILD_STDERR;
    uv_pipe_init(loop, &child->out.pipe, 0);
    uv_pipe_init(loop, &child->err.pipe, 0);
    child->out.pipe.data = &child->out;
    child->err.pipe.data = &child->err;
    a->options.stdio[1].data.stream = (uv_stream_t *)&child->out.pipe;
    a->options.stdio[2].data.stream = (uv_stream_t *)&child->err.pipe;
    child->process.data = child;
    hold(child); /* the I/O side's, until every handle is closed */
    child->open_handles = 2;
    a->r = uv_spawn(loop, &child->process, &a->options);
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

static int
fail(tether_error *reterr, int r, const char *format, ...) TETHER_PRINTF(3, 4);

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

/* Wait until the child connected or exited, or the deadline. */
static int
wait_connected(tether_child *child, uint64_t deadline)
{
    pthread_mutex_lock(&child->lock);
    while (!child->connected && !child->exited && tether_now_usec() < deadline) {
        tether__cond_wait_until(&child->changed, &child->lock, deadline);
    }
    int r = child->connected ? 0 : child->exited ? -ECONNRESET : -ETIMEDOUT;
    pthread_mutex_unlock(&child->lock);
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
    const char *executable = o->executable ? o->executable : getenv("TETHER_PYTHON");
    if (!executable || !*executable) {
        executable = "python3";
    }
    const char *python_path = o->python_path ? o->python_path : getenv("TETHER_PYTHONPATH");
    if (!python_path || !*python_path) {
        python_path = TETHER_PYTHON_DIR;
    }
    const char *name = o->name ? o->name : "child";
    uint64_t deadline = tether_now_usec() +
                        (o->start_timeout_usec ? o->start_timeout_usec : DEFAULT_START_TIMEOUT_USEC);

    tether_child *child = tether__calloc(1, sizeof(*child));
    if (!child || !(child->name = tether__strdup(name))) {
        tether__free(child);
        return fail(reterr, -ENOMEM, "out of memory");
    }
    atomic_init(&child->refs, 1);
    atomic_init(&child->holds, 1);
    child->host = tether_host_ref(host);
    child->ep = ep;
    child->output = o->output;
    child->output_userdata = o->output_userdata;
    child->on_exit = o->on_exit;
    child->on_exit_userdata = o->on_exit_userdata;
    pthread_mutex_init(&child->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&child->changed, &attr);
    pthread_condattr_destroy(&attr);

    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        int r = -errno;
        tether_child_unref(child);
        return fail(reterr, r, "socketpair: %s", tether_strerror(r));
    }
    int r = tether__host_adopt_child(host, pair[0], on_child_open, child, &child->conn);
    if (r < 0) {
        close(pair[0]);
        close(pair[1]);
        tether_child_unref(child);
        return fail(reterr, r, "cannot serve the child's connection: %s", tether_strerror(r));
    }

    env_list env = {0};
    r = child_env(o, python_path, name, &env);
    size_t nargs = 0;
    while (o->args && o->args[nargs]) {
        nargs++;
    }
    char **argv = r == 0 ? tether__calloc(nargs + 4, sizeof(char *)) : NULL;
    start_arg a = {.child = child, .r = -ENOMEM};
    if (argv) {
        /* sys.argv[1:] is set by the child from the start spec. */
        argv[0] = (char *)executable;
        argv[1] = "-c";
        argv[2] = (char *)bootstrap;
        uv_stdio_container_t stdio[4] = {
            {.flags = UV_IGNORE},
            {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE},
            {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE},
            {.flags = UV_INHERIT_FD, .data.fd = pair[1]},
        };
        a.options = (uv_process_options_t){
            .exit_cb = on_process_exit,
            .file = executable,
            .args = argv,
            .env = env.v,
            .cwd = o->cwd,
            .stdio_count = 4,
            .stdio = stdio,
        };
        tether__ioloop_run_sync(ep->loop, start_process, &a);
    }
    close(pair[1]);
    tether__free(argv);
    env_done(&env);
    if (a.r < 0) {
        tether_child_unref(child);
        return fail(reterr, a.r == UV_ENOENT ? -ENOENT : a.r, "cannot start %s: %s", executable,
                    uv_strerror(a.r));
    }
    tether__log(ep, TETHER_LOG_INFO, "spawned %s (pid %lld): %s", name, (long long)child->pid,
                executable);

    r = wait_connected(child, deadline);
    if (r < 0) {
        tether_child_unref(child);
        return fail(reterr, r,
                    r == -ETIMEDOUT ? "%s did not connect in time"
                                    : "%s exited before connecting (not a Python 3.10+ "
                                      "interpreter, or tether could not be imported from %s)",
                    executable, r == -ETIMEDOUT ? "" : python_path);
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
