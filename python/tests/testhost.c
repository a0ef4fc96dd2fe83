/*
 * testhost: the C host the Python tests (python/tests) talk to. Built by CMake as
 * build/tether-testhost; public API only.
 *
 *   tether-testhost NAME
 *
 * Serves the host NAME in the runtime directory ($TETHER_RUNTIME_DIR), prints
 * "ready ADDRESS" on stdout once listening, and runs until its stdin reaches end of file
 * (so it never outlives the test process that started it), SIGTERM or SIGINT.
 *
 * Every service but held_call runs on the I/O thread (IO context) and never blocks; the
 * ones that answer later keep the request (tether_request_ref) and reply from another
 * thread or from a future's completion callback:
 *
 *   add(a, b)                  a + b (64-bit integers)
 *   echo(x)                    x
 *   echo_args(*args, **kw)     [args, kwargs]
 *   fail(type, message)        replies an error of that type and message
 *   slow(ms)                   replies ms after ms milliseconds, from a thread
 *   stuck()                    never replies (the request is kept, so the caller hears
 *                              progress and does not time out); see stuck_state
 *   stuck_state()              [kept, cancelled]: stuck() requests kept, and how many of
 *                              them their caller has cancelled
 *   note(*args)                records args (meant to be sent as a notification)
 *   notes()                    the recorded args lists, oldest first, and forgets them
 *   clients()                  [[name, language, language_version], ...] of the clients
 *   call_client(name, method, args)    calls method(*args) on the client called name and
 *                              replies its result or its error
 *   call_client_cancel(name, method, args, ms)    the same, but cancels that call after
 *                              ms milliseconds (its caller then gets tether.Cancelled)
 *   notify_client(name, method, args)  sends method(*args) to that client as a
 *                              notification; replies nil
 *   client_calls(name)         requests and notifications received from that client
 *   call_when_offered(name, method, args, seconds)    waits up to seconds for that client
 *                              to announce method (tether_conn_wait_service), then calls it
 *                              and replies its result; TimeoutError if it never does
 *   make_counter(start=0)      a new Counter object (by reference), alive while a proxy
 *                              to it is: add(n=1), get() (a worker thread), fail(message),
 *                              attributes value and label (settable), repr, len
 *   counters_released()        how many Counters have been released
 *   hold(obj) -> slot          the host keeps a reference to obj (a script's object)
 *   held_call(slot, method, args, kwargs)   calls that method of the held object (on a
 *                              worker thread, as the call blocks) and replies its outcome
 *   get_held(slot)             the held object; drop(slot) lets it go
 *   same(a, b) -> [a is b, a is a proxy]
 *
 * and, for the `tether` command line, tether.globals() -> {"clients": n, "notes": n}
 * beside the library's built-in services (all of them: tether.services, tether.clients,
 * tether.reset_client, tether.disconnect_client, tether.call_client).
 *
 * If $TETHER_TESTHOST_LOG names a file, the host's log (every level, debug included, and
 * so the records clients send with tether_conn_log) is appended to it, one line per
 * record: "LEVEL MESSAGE", LEVEL the syslog number. With $TETHER_TESTHOST_TCP_ONLY=1 it
 * listens on loopback TCP only, on a free port ("ready tcp:127.0.0.1:PORT").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

#define MAX_KEPT 256
#define MAX_NOTES 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static tether_request *kept[MAX_KEPT];      /* guarded by lock */
static size_t kept_count;                   /* guarded by lock */
static tether_value *notes_list[MAX_NOTES]; /* guarded by lock */
static size_t notes_count;                  /* guarded by lock */

/* ---- a tiny msgpack writer for replies whose shape the format strings cannot say ---- */

typedef struct {
    unsigned char *data;
    size_t len, cap;
    int failed;
} out_buf;

static void
put(out_buf *b, const void *p, size_t n)
{
    if (b->failed) {
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) {
            cap *= 2;
        }
        unsigned char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void
put_array_header(out_buf *b, uint32_t n)
{
    unsigned char h[5] = {0xdd, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};
    put(b, h, sizeof(h));
}

static void
put_str(out_buf *b, const char *s)
{
    if (!s) {
        unsigned char nil = 0xc0;
        put(b, &nil, 1);
        return;
    }
    uint32_t n = (uint32_t)strlen(s);
    unsigned char h[5] = {0xdb, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};
    put(b, h, sizeof(h));
    put(b, s, n);
}

static int
reply_buf(tether_request *req, out_buf *b)
{
    tether_value *v = NULL;
    int r = b->failed ? TETHER_ENOMEM : tether_value_new_msgpack(b->data, b->len, &v);
    free(b->data);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

/* ---- services ----------------------------------------------------------------------- */

static int
add(tether_request *req, void *userdata)
{
    int64_t a, b;
    int r = tether_request_read(req, "xx", &a, &b);
    return r < 0 ? r : tether_request_reply(req, "x", a + b);
}

static int
echo(tether_request *req, void *userdata)
{
    tether_value *v = NULL;
    int r = tether_request_read(req, "v", &v);
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

static int
echo_args(tether_request *req, void *userdata)
{
    tether_value *v = NULL;
    int r =
        tether_value_new(&v, "[vv]", tether_request_get_args(req), tether_request_get_kwargs(req));
    if (r < 0) {
        return r;
    }
    r = tether_request_reply_value(req, v);
    tether_value_unref(v);
    return r;
}

static int
fail(tether_request *req, void *userdata)
{
    const char *type, *message;
    int r = tether_request_read(req, "ss", &type, &message);
    if (r < 0) {
        return r;
    }
    return tether_request_reply_error(req, type ? type : "Exception", "%s", message ? message : "");
}

typedef struct {
    tether_request *req;
    int64_t ms;
} slow_job;

static void *
slow_thread(void *arg)
{
    slow_job *job = arg;
    struct timespec ts = {.tv_sec = job->ms / 1000, .tv_nsec = (job->ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    tether_request_reply(job->req, "x", job->ms);
    tether_request_unref(job->req);
    free(job);
    return NULL;
}

static int
slow(tether_request *req, void *userdata)
{
    int64_t ms;
    int r = tether_request_read(req, "x", &ms);
    if (r < 0) {
        return r;
    }
    if (ms < 0 || ms > 60000) {
        return tether_request_reply_error(req, "ValueError", "ms out of range: %lld",
                                          (long long)ms);
    }
    slow_job *job = malloc(sizeof(*job));
    if (!job) {
        return TETHER_ENOMEM;
    }
    job->req = tether_request_ref(req);
    job->ms = ms;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    r = pthread_create(&t, &attr, slow_thread, job);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        tether_request_unref(job->req); /* replies "dropped the request" */
        free(job);
        return -r;
    }
    return 0;
}

static int
stuck(tether_request *req, void *userdata)
{
    pthread_mutex_lock(&lock);
    int full = kept_count == MAX_KEPT;
    if (!full) {
        kept[kept_count++] = tether_request_ref(req);
    }
    pthread_mutex_unlock(&lock);
    if (full) {
        return tether_request_reply_error(req, "RuntimeError", "too many stuck calls");
    }
    return 0;
}

static int
stuck_state(tether_request *req, void *userdata)
{
    int cancelled = 0;
    pthread_mutex_lock(&lock);
    int count = (int)kept_count;
    for (size_t i = 0; i < kept_count; i++) {
        cancelled += tether_request_is_cancelled(kept[i]);
    }
    pthread_mutex_unlock(&lock);
    return tether_request_reply(req, "[ii]", count, cancelled);
}

static int
note(tether_request *req, void *userdata)
{
    tether_value *args = tether_request_get_args(req);
    pthread_mutex_lock(&lock);
    if (args && notes_count < MAX_NOTES) {
        notes_list[notes_count++] = tether_value_ref(args);
    }
    pthread_mutex_unlock(&lock);
    return 0;
}

static int
notes(tether_request *req, void *userdata)
{
    out_buf b = {0};
    pthread_mutex_lock(&lock);
    put_array_header(&b, (uint32_t)notes_count);
    for (size_t i = 0; i < notes_count; i++) {
        const void *data;
        size_t size;
        tether_value_get_msgpack(notes_list[i], &data, &size);
        put(&b, data, size);
        notes_list[i] = tether_value_unref(notes_list[i]);
    }
    notes_count = 0;
    pthread_mutex_unlock(&lock);
    return reply_buf(req, &b);
}

static int
clients(tether_request *req, void *userdata)
{
    tether_host *host = userdata;
    tether_client_info *infos;
    size_t count;
    int r = tether_host_list_clients(host, &infos, &count);
    if (r < 0) {
        return r;
    }
    out_buf b = {0};
    put_array_header(&b, (uint32_t)count);
    for (size_t i = 0; i < count; i++) {
        put_array_header(&b, 3);
        put_str(&b, infos[i].name);
        put_str(&b, infos[i].language);
        put_str(&b, infos[i].language_version);
    }
    tether_client_infos_free(infos, count);
    return reply_buf(req, &b);
}

/* The client's call completed (on the I/O thread): pass its outcome on. */
static void
client_call_done(tether_future *future, void *userdata)
{
    tether_request *req = userdata;
    tether_value *result = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_future_get_result(future, &result, &error);
    if (r == 0) {
        tether_request_reply_value(req, result);
    } else if (error.type) {
        /* Passed on whole, traceback included. */
        tether_request_reply_error_full(req, &error);
    } else {
        tether_request_reply_error(req, "tether.Error", "%s", tether_strerror(r));
    }
    tether_value_unref(result);
    tether_error_done(&error);
    tether_future_unref(future);
    tether_request_unref(req);
}

/*
 * Call method(*args) on the client called name, for req, which client_call_done replies
 * the outcome. Returns 0 and, if ret_future is not NULL, a reference to the call's future;
 * or what the handler returns after an error (replied already, or to reply).
 */
static int
forward_to_client(tether_request *req, tether_host *host, const char *name, const char *method,
                  tether_value *args, tether_future **ret_future)
{
    tether_conn *conn = NULL;
    int r = tether_host_get_client(host, name ? name : "", &conn);
    if (r < 0) {
        return tether_request_reply_error(req, "LookupError", "no client named '%s'",
                                          name ? name : "");
    }
    tether_future *future = NULL;
    r = tether_conn_call_async_values(conn, method ? method : "", args, NULL, NULL, &future);
    tether_conn_unref(conn);
    if (r < 0) {
        return tether_request_reply_error(req, "tether.Error", "call_client: %s",
                                          tether_strerror(r));
    }
    if (ret_future) {
        *ret_future = tether_future_ref(future);
    }
    tether_request_ref(req);
    r = tether_future_set_callback(future, TETHER_CONTEXT_IO, client_call_done, req);
    if (r < 0) {
        if (ret_future) {
            *ret_future = tether_future_unref(*ret_future);
        }
        tether_future_unref(future);
        tether_request_unref(req);
        return r;
    }
    return 0;
}

static int
call_client(tether_request *req, void *userdata)
{
    const char *name, *method;
    tether_value *args = NULL;
    int r = tether_request_read(req, "ssv", &name, &method, &args);
    if (r < 0) {
        return r;
    }
    r = forward_to_client(req, userdata, name, method, args, NULL);
    tether_value_unref(args);
    return r;
}

typedef struct {
    tether_future *future;
    int64_t ms;
} cancel_job;

static void *
cancel_thread(void *arg)
{
    cancel_job *job = arg;
    struct timespec ts = {.tv_sec = job->ms / 1000, .tv_nsec = (job->ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
    tether_future_cancel(job->future); /* TETHER_EALREADY if it completed meanwhile */
    tether_future_unref(job->future);
    free(job);
    return NULL;
}

static int
call_client_cancel(tether_request *req, void *userdata)
{
    const char *name, *method;
    tether_value *args = NULL;
    int64_t ms;
    int r = tether_request_read(req, "ssvx", &name, &method, &args, &ms);
    if (r < 0) {
        return r;
    }
    if (ms < 0 || ms > 60000) {
        tether_value_unref(args);
        return tether_request_reply_error(req, "ValueError", "ms out of range: %lld",
                                          (long long)ms);
    }
    cancel_job *job = malloc(sizeof(*job));
    if (!job) {
        tether_value_unref(args);
        return TETHER_ENOMEM;
    }
    job->future = NULL;
    job->ms = ms;
    r = forward_to_client(req, userdata, name, method, args, &job->future);
    tether_value_unref(args);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (!job->future || pthread_create(&t, &attr, cancel_thread, job) != 0) {
        tether_future_unref(job->future); /* not cancelled: the call goes on */
        free(job);
    }
    pthread_attr_destroy(&attr);
    return r;
}

static int
notify_client(tether_request *req, void *userdata)
{
    tether_host *host = userdata;
    const char *name, *method;
    tether_value *args = NULL;
    int r = tether_request_read(req, "ssv", &name, &method, &args);
    if (r < 0) {
        return r;
    }
    tether_conn *conn = NULL;
    r = tether_host_get_client(host, name ? name : "", &conn);
    if (r == 0) {
        r = tether_conn_notify_values(conn, method ? method : "", args, NULL);
        tether_conn_unref(conn);
    }
    tether_value_unref(args);
    return r;
}

/* ---- main --------------------------------------------------------------------------- */

static FILE *log_file;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER; /* lines stay whole */

static void
log_line(void *userdata, int level, const char *message)
{
    (void)userdata;
    pthread_mutex_lock(&log_lock);
    fprintf(log_file, "%d %s\n", level, message);
    fflush(log_file);
    pthread_mutex_unlock(&log_lock);
}

/* client_calls(name) -> requests and notifications the host received from that client. */
static int
client_calls(tether_request *req, void *userdata)
{
    tether_host *host = userdata;
    const char *name;
    if (tether_request_read(req, "s", &name) < 0 || !name) {
        return TETHER_EINVAL;
    }
    tether_client_info *infos;
    size_t count;
    int r = tether_host_list_clients(host, &infos, &count);
    if (r < 0) {
        return r;
    }
    int64_t calls = -1;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(infos[i].name, name) == 0) {
            calls = (int64_t)infos[i].calls_in;
        }
    }
    tether_client_infos_free(infos, count);
    return calls < 0 ? tether_request_reply_error(req, "KeyError", "no client '%s'", name)
                     : tether_request_reply(req, "x", calls);
}

/* call_when_offered(name, method, args, seconds) -> waits (a worker thread) up to seconds
 * for the client called name to announce method, then calls it and replies its result;
 * TimeoutError if it never offers it. */
static int
call_when_offered(tether_request *req, void *userdata)
{
    tether_host *host = userdata;
    const char *name, *method;
    tether_value *args = NULL;
    double seconds;
    if (tether_request_read(req, "ssvd", &name, &method, &args, &seconds) < 0 || !name || !method ||
        seconds < 0) {
        tether_value_unref(args);
        return TETHER_EINVAL;
    }
    tether_conn *conn = NULL;
    int r = tether_host_get_client(host, name, &conn);
    if (r < 0) {
        tether_value_unref(args);
        return tether_request_reply_error(req, "LookupError", "no client named '%s'", name);
    }
    r = tether_conn_wait_service(conn, method, (uint64_t)(seconds * 1e6));
    if (r < 0) {
        r = tether_request_reply_error(req, r == TETHER_ETIMEDOUT ? "TimeoutError" : "tether.Error",
                                       "client '%s' did not offer '%s': %s", name, method,
                                       tether_strerror(r));
    } else {
        tether_value *result = NULL;
        tether_error err = TETHER_ERROR_INIT;
        r = tether_conn_call_values(conn, method, args, NULL, NULL, &result, &err);
        r = r < 0 ? tether_request_reply_error_full(req, &err)
                  : tether_request_reply_value(req, result);
        tether_value_unref(result);
        tether_error_done(&err);
    }
    tether_conn_unref(conn);
    tether_value_unref(args);
    return r;
}

/* ---- objects ------------------------------------------------------------------------- */

/* A C object handed out by reference: what a script's proxy calls into. */
typedef struct counter {
    atomic_llong value;
    char label[64];
} counter;

static atomic_int counters_released;

static int
counter_add(tether_request *req, void *userdata)
{
    counter *c = userdata;
    int64_t n = 1;
    if (tether_request_read(req, "x", &n) < 0 && tether_request_read(req, "") < 0) {
        return TETHER_EINVAL;
    }
    return tether_request_reply(req, "x", (int64_t)(atomic_fetch_add(&c->value, n) + n));
}

static int
counter_get(tether_request *req, void *userdata)
{
    counter *c = userdata;
    return tether_request_reply(req, "x", (int64_t)atomic_load(&c->value));
}

static int
counter_fail(tether_request *req, void *userdata)
{
    const char *message = "";
    tether_request_read(req, "s", &message);
    return tether_request_reply_error(req, "ValueError", "%s", message ? message : "");
}

/* Attributes for Python proxies: value and label. */
static int
counter_getattr(tether_request *req, void *userdata)
{
    counter *c = userdata;
    const char *name;
    if (tether_request_read(req, "s", &name) < 0 || !name) {
        return TETHER_EINVAL;
    }
    if (strcmp(name, "value") == 0) {
        return tether_request_reply(req, "x", (int64_t)atomic_load(&c->value));
    }
    if (strcmp(name, "label") == 0) {
        pthread_mutex_lock(&lock);
        int r = tether_request_reply(req, "s", c->label);
        pthread_mutex_unlock(&lock);
        return r;
    }
    return tether_request_reply_error(req, "AttributeError",
                                      "'Counter' object has no "
                                      "attribute '%s'",
                                      name);
}

static int
counter_setattr(tether_request *req, void *userdata)
{
    counter *c = userdata;
    const char *name, *text;
    if (tether_request_read(req, "s*", &name) < 0 || !name) {
        return TETHER_EINVAL;
    }
    if (strcmp(name, "label") != 0) {
        return tether_request_reply_error(req, "AttributeError", "can only set 'label'");
    }
    if (tether_request_read(req, "ss", &name, &text) < 0 || !text) {
        return TETHER_EINVAL;
    }
    pthread_mutex_lock(&lock);
    snprintf(c->label, sizeof(c->label), "%s", text);
    pthread_mutex_unlock(&lock);
    return 0;
}

static int
counter_repr(tether_request *req, void *userdata)
{
    counter *c = userdata;
    char text[96];
    snprintf(text, sizeof(text), "<Counter %lld>", (long long)atomic_load(&c->value));
    return tether_request_reply(req, "s", text);
}

static void
counter_release(void *userdata)
{
    free(userdata);
    atomic_fetch_add(&counters_released, 1);
}

static const tether_method counter_methods[] = {
    {"add", TETHER_CONTEXT_IO, counter_add},
    {"get", TETHER_CONTEXT_POOL, counter_get},
    {"fail", TETHER_CONTEXT_IO, counter_fail},
    {"__getattr__", TETHER_CONTEXT_IO, counter_getattr},
    {"__setattr__", TETHER_CONTEXT_IO, counter_setattr},
    {"__repr__", TETHER_CONTEXT_IO, counter_repr},
    {"__len__", TETHER_CONTEXT_IO, counter_get},
    {NULL, 0, NULL},
};

static const tether_class counter_class = {
    .name = "Counter",
    .methods = counter_methods,
    .release = counter_release,
};

/* make_counter(start=0) -> Counter, kept alive only by the caller's proxy. */
static int
make_counter(tether_request *req, void *userdata)
{
    tether_host *host = userdata;
    int64_t start = 0;
    if (tether_request_read(req, "x", &start) < 0 && tether_request_read(req, "") < 0) {
        return TETHER_EINVAL;
    }
    counter *c = calloc(1, sizeof(*c));
    tether_object *obj = NULL;
    if (!c || tether_host_new_object(host, &counter_class, c, &obj) < 0) {
        free(c);
        return TETHER_ENOMEM;
    }
    atomic_store(&c->value, start);
    int r = tether_request_reply(req, "o", obj);
    tether_object_unref(obj);
    return r;
}

static int
counters_released_service(tether_request *req, void *userdata)
{
    return tether_request_reply(req, "i", atomic_load(&counters_released));
}

/* Objects the host holds for the tests: hold(obj) -> slot, held_call, drop(slot). */
#define HELD_MAX 64
static tether_object *held[HELD_MAX]; /* guarded by lock */

static int
hold(tether_request *req, void *userdata)
{
    tether_object *obj = NULL;
    if (tether_request_read(req, "o", &obj) < 0 || !obj) {
        return TETHER_EINVAL;
    }
    pthread_mutex_lock(&lock);
    int slot = 0;
    while (slot < HELD_MAX && held[slot]) {
        slot++;
    }
    if (slot < HELD_MAX) {
        held[slot] = obj;
    }
    pthread_mutex_unlock(&lock);
    if (slot == HELD_MAX) {
        tether_object_unref(obj);
        return tether_request_reply_error(req, "RuntimeError", "holding too many objects");
    }
    return tether_request_reply(req, "i", slot);
}

static tether_object *
held_ref(int slot)
{
    pthread_mutex_lock(&lock);
    tether_object *obj = slot >= 0 && slot < HELD_MAX ? tether_object_ref(held[slot]) : NULL;
    pthread_mutex_unlock(&lock);
    return obj;
}

/* held_call(slot, method, args, kwargs) -> what the held object's method returns (a
 * worker thread: the call blocks). */
static int
held_call(tether_request *req, void *userdata)
{
    int slot;
    const char *method;
    tether_value *args = NULL, *kwargs = NULL;
    if (tether_request_read(req, "isvv", &slot, &method, &args, &kwargs) < 0) {
        return TETHER_EINVAL;
    }
    tether_object *obj = held_ref(slot);
    tether_value *result = NULL;
    tether_error err = TETHER_ERROR_INIT;
    int r = obj ? tether_object_call_values(obj, method, args, kwargs, NULL, &result, &err)
                : TETHER_ENOENT;
    if (r == 0) {
        r = tether_request_reply_value(req, result);
    } else if (err.type) {
        r = tether_request_reply_error_full(req, &err);
    } else {
        r = tether_request_reply_error(req, "KeyError", "no object held in slot %d", slot);
    }
    tether_object_unref(obj);
    tether_value_unref(result);
    tether_value_unref(args);
    tether_value_unref(kwargs);
    tether_error_done(&err);
    return r;
}

/* get_held(slot) -> the held object itself (a proxy goes back to its owner). */
static int
get_held(tether_request *req, void *userdata)
{
    int slot;
    if (tether_request_read(req, "i", &slot) < 0) {
        return TETHER_EINVAL;
    }
    tether_object *obj = held_ref(slot);
    int r = obj ? tether_request_reply(req, "o", obj)
                : tether_request_reply_error(req, "KeyError", "no object in slot %d", slot);
    tether_object_unref(obj);
    return r;
}

static int
drop(tether_request *req, void *userdata)
{
    int slot;
    if (tether_request_read(req, "i", &slot) < 0 || slot < 0 || slot >= HELD_MAX) {
        return TETHER_EINVAL;
    }
    pthread_mutex_lock(&lock);
    tether_object *obj = held[slot];
    held[slot] = NULL;
    pthread_mutex_unlock(&lock);
    tether_object_unref(obj); /* outside the lock: a proxy's release is sent from here */
    return 0;
}

/* same(a, b) -> bool: the two arguments are one object (or one proxy). */
static int
same(tether_request *req, void *userdata)
{
    tether_object *a = NULL, *b = NULL;
    if (tether_request_read(req, "oo", &a, &b) < 0) {
        return TETHER_EINVAL;
    }
    int r = tether_request_reply(req, "[bb]", a == b, a && tether_object_is_remote(a));
    tether_object_unref(a);
    tether_object_unref(b);
    return r;
}

/* ---- tether.*: for the `tether` command line ------------------------------------------ */

static int
tether_globals(tether_request *req, void *userdata)
{
    pthread_mutex_lock(&lock);
    int n = (int)notes_count;
    pthread_mutex_unlock(&lock);
    return tether_request_reply(req, "{sisi}", "clients", tether_host_get_client_count(userdata),
                                "notes", n);
}


/* A buffer of n bytes, byte i being (i * 7) & 0xff; an image (format 'B' of [height,
 * width, 4]) when image is true. */
static int
reply_buffer(tether_request *req, uint64_t n, bool image, uint64_t height, uint64_t width)
{
    tether_buffer *b = NULL;
    int r = tether_buffer_new((size_t)n, &b);
    if (r < 0) {
        return r;
    }
    uint8_t *w = tether_buffer_get_writable(b);
    for (uint64_t i = 0; i < n; i++) {
        w[i] = (uint8_t)(i * 7);
    }
    const size_t shape[3] = {(size_t)height, (size_t)width, 4};
    r = image ? tether_buffer_set_array(b, 'B', shape, 3) : 0;
    r = r < 0 ? r : tether_request_reply(req, "B", b);
    tether_buffer_unref(b);
    return r;
}

/* make_buffer(n): a buffer of n bytes (tests of buffers; see reply_buffer). */
static int
make_buffer(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t n = 0;
    int r = tether_request_read(req, "u", &n);
    return r < 0 ? r : reply_buffer(req, n, false, 0, 0);
}

/* make_image(height, width): an RGBA image, an array buffer of uint8 [height, width, 4]. */
static int
make_image(tether_request *req, void *userdata)
{
    (void)userdata;
    uint64_t height = 0, width = 0;
    int r = tether_request_read(req, "uu", &height, &width);
    return r < 0 ? r : reply_buffer(req, height * width * 4, true, height, width);
}

static const struct {
    const char *name;
    tether_handler_fn fn;
    tether_context context;
} services[] = {
    {"add", add, TETHER_CONTEXT_IO},
    {"echo", echo, TETHER_CONTEXT_IO},
    {"make_buffer", make_buffer, TETHER_CONTEXT_IO},
    {"make_image", make_image, TETHER_CONTEXT_IO},
    {"echo_args", echo_args, TETHER_CONTEXT_IO},
    {"fail", fail, TETHER_CONTEXT_IO},
    {"slow", slow, TETHER_CONTEXT_IO},
    {"stuck", stuck, TETHER_CONTEXT_IO},
    {"stuck_state", stuck_state, TETHER_CONTEXT_IO},
    {"note", note, TETHER_CONTEXT_IO},
    {"notes", notes, TETHER_CONTEXT_IO},
    {"clients", clients, TETHER_CONTEXT_IO},
    {"call_client", call_client, TETHER_CONTEXT_IO},
    {"call_client_cancel", call_client_cancel, TETHER_CONTEXT_IO},
    {"notify_client", notify_client, TETHER_CONTEXT_IO},
    {"client_calls", client_calls, TETHER_CONTEXT_IO},
    {"call_when_offered", call_when_offered, TETHER_CONTEXT_POOL},
    {"make_counter", make_counter, TETHER_CONTEXT_IO},
    {"counters_released", counters_released_service, TETHER_CONTEXT_IO},
    {"hold", hold, TETHER_CONTEXT_IO},
    {"held_call", held_call, TETHER_CONTEXT_POOL},
    {"get_held", get_held, TETHER_CONTEXT_IO},
    {"drop", drop, TETHER_CONTEXT_IO},
    {"same", same, TETHER_CONTEXT_IO},
    {"tether.globals", tether_globals, TETHER_CONTEXT_IO},
};

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s NAME\n", argv[0]);
        return 2;
    }
    /* Blocked before the library starts its threads, which inherit the mask. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* The built-in services too: the tests of the command line use them. */
    tether_host_options options = {.name = argv[1], .builtin_services = TETHER_BUILTIN_ALL};
    /* TETHER_TESTHOST_TCP_ONLY=1: no Unix socket, loopback TCP on a free port, so that
     * only its host file says where it is. */
    const char *tcp_only = getenv("TETHER_TESTHOST_TCP_ONLY");
    if (tcp_only && strcmp(tcp_only, "1") == 0) {
        options.no_unix = true;
        options.tcp = true;
        options.tcp_port = TETHER_PORT_EPHEMERAL;
    }
    const char *log_path = getenv("TETHER_TESTHOST_LOG");
    if (log_path && *log_path) {
        log_file = fopen(log_path, "a");
        if (!log_file) {
            fprintf(stderr, "tether-testhost: %s: %s\n", log_path, strerror(errno));
            return 1;
        }
        options.log = log_line;
        options.log_level = TETHER_LOG_DEBUG;
    }
    tether_host *host = NULL;
    int r = tether_host_new(&options, &host);
    for (size_t i = 0; r == 0 && i < sizeof(services) / sizeof(services[0]); i++) {
        r = tether_host_add_service(host, services[i].name, services[i].context, services[i].fn,
                                    host);
    }
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "tether-testhost: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    if (options.no_unix) {
        printf("ready tcp:127.0.0.1:%d\n", tether_host_get_tcp_port(host));
    } else {
        printf("ready %s\n", tether_host_get_address(host));
    }
    fflush(stdout);

    for (;;) {
        struct timespec zero = {0};
        if (sigtimedwait(&signals, NULL, &zero) >= 0) {
            break;
        }
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            char buf[256];
            if (read(STDIN_FILENO, buf, sizeof(buf)) <= 0) {
                break; /* end of file: whoever started us is gone */
            }
        }
    }

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < kept_count; i++) {
        kept[i] = tether_request_unref(kept[i]);
    }
    kept_count = 0;
    for (size_t i = 0; i < notes_count; i++) {
        notes_list[i] = tether_value_unref(notes_list[i]);
    }
    notes_count = 0;
    for (size_t i = 0; i < HELD_MAX; i++) {
        held[i] = tether_object_unref(held[i]);
    }
    pthread_mutex_unlock(&lock);
    tether_host_unref(host);
    if (log_file) {
        fclose(log_file);
    }
    return 0;
}
