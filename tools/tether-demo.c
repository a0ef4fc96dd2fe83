/*
 * tether-demo: an engine-like host to script.
 *
 * It behaves like a small game engine or editor. Its main thread runs a frame loop at 60
 * frames per second and owns a scene of named actors (a name, a position, a label).
 * Scripts in other processes change the scene through services, and through the actors
 * themselves: an actor travels by reference, so a script holds a proxy and calls its
 * methods (docs/c-guide.md, "Objects by reference"). Every service and method that
 * touches the scene is TETHER_CONTEXT_MAIN: it runs on the main thread, inside the frame
 * loop's dispatch, so the scene needs no lock.
 *
 * It prints what happens, one timestamped line each: clients arriving and leaving,
 * actors spawned, renamed, deleted and released, messages logged, errors, every call
 * served (unless --quiet), and every few seconds the frame timing, which shows that
 * scripts never stall the loop.
 *
 * Services (MAIN unless said; keyword arguments are accepted by name):
 *   spawn_actor(name, x=0.0, y=0.0, label="") -> Actor   ValueError if the name is taken
 *   list_actors() -> [Actor]                             in spawn order
 *   get_actor(name) -> Actor                             KeyError if there is none
 *   move_actor(actor, dx, dy) -> [x, y]                  actor: an Actor or a name
 *   rename_actor(actor, new_name)
 *   delete_actor(actor)
 *   log(message)                                         printed as "[client] message"
 *   frame_stats() -> {"frames", "fps", "frame_ms_mean", "frame_ms_max",
 *                     "dispatch_ms_max", "late_frames", "calls"}
 *   scene_stats() -> {"actors", "spawned", "deleted", "released"}   the scene's size, and
 *                     counts since the start (deleted, not released: a proxy holds it)
 *   globals() -> {"actors": [Actor], "frame": n, "fps": x}   for a REPL's namespace
 *   subscribe_actor_events(method="on_actor_event", every=6) -> {"actors", "every", "fps"}
 *                     the caller's service `method` is told of actors spawned, ticked
 *                     (every N frames) and destroyed; see "actor events" below
 *   unsubscribe_actor_events() -> bool                   whether the caller was subscribed
 *   add(a, b), greet(name), echo(value) (IO)             for examples/hello_client.c
 * and, for the `tether` command line:
 *   tether.globals() (MAIN)                              the same as globals()
 *   the library's built-in services (tether_host_options.builtin_services, all of them):
 *   tether.services, tether.clients, tether.reset_client, tether.disconnect_client and
 *   tether.call_client (include/tether.h, TETHER_BUILTIN_*)
 * Methods of an Actor: move(dx, dy) -> [x, y], position() -> [x, y], rename(new_name),
 * set_label(text), delete(), info() -> map; and for proxies: __getattr__ (name, x, y,
 * label, alive), __setattr__ (name, x, y, label), __repr__, __str__, __bool__, __dir__.
 * An actor's methods fail with ReferenceError once it was deleted; its struct lives on
 * until the last reference to it is gone (the scene's, and every proxy's).
 *
 * tests/test-demo.c runs this program and works it as a client over its socket, which
 * is also what `make demo ARGS=--once` runs (tools/demo.py).
 */
#define _GNU_SOURCE /* ppoll */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tether.h>

#define DEFAULT_NAME "demo"
/* 60 frames per second; scripts get at most DISPATCH_BUDGET_USEC of each. */
#define FPS 60
#define FRAME_USEC (1000000ull / FPS)
#define DISPATCH_BUDGET_USEC 2000ull
/* A frame that starts more than this after it was due is late: a visible stutter. */
#define LATE_USEC (FRAME_USEC / 4)
/* fps is measured over the last second of frames. */
#define FPS_WINDOW FPS
/* The frame-timing line: after a second with calls in it, else every five seconds. */
#define TIMING_BUSY_USEC 1000000ull
#define TIMING_IDLE_USEC 5000000ull
/* The most parameters of any service or method, and the longest actor name. */
#define MAX_ARGS 4
#define MAX_NAME 64

typedef struct demo_options {
    const char *name;
    bool tcp;
    int tcp_port; /* as in tether_host_options */
    long seconds; /* 0: until a signal */
    bool quiet;   /* no line per call, only events */
} demo_options;

typedef struct demo demo;

/* An actor of the scene. Its struct outlives its place in the scene while anyone still
 * holds a reference to its object, so that a late call finds it and can say it is gone. */
typedef struct actor {
    demo *demo;
    uint64_t id; /* 1, 2, ... in spawn order: stays when the actor is renamed */
    char *name;
    char *label;
    double x, y;
    bool in_scene;
    tether_object *obj; /* the scene's reference, while in the scene */
} actor;

/* An event of an actor, as subscribers are told of it. */
typedef struct actor_event {
    const char *event; /* "spawned", "ticked", "destroyed" */
    uint64_t id, frame;
    char *name, *label; /* borrowed from the actor, or copies (a missed event) */
    double x, y;
    tether_object *obj; /* the actor, by reference, for "spawned" */
    bool existing;      /* "spawned": in the scene before the subscription */
} actor_event;

/* A client that asked for the actors' lifecycle events (subscribe_actor_events). */
typedef struct subscriber {
    tether_conn *conn; /* a reference; NULL while its client is away */
    char *peer;        /* the client's name and pid, to know it when it comes back */
    int64_t pid;
    char *method;             /* its service that receives the events */
    uint64_t every;           /* a "ticked" event every this many frames; 0: none */
    uint64_t away_since_usec; /* while conn is NULL: since when */
    actor_event *missed;      /* while away: actors spawned and destroyed meanwhile */
    size_t missed_count, missed_cap;
} subscriber;

/* Frame timing since the last frame-timing line. */
typedef struct frame_period {
    uint64_t start_usec;
    uint64_t frames, late;
    uint64_t frame_max_usec, dispatch_max_usec;
    uint64_t calls_before; /* demo.calls when the period began */
} frame_period;

/* Frame timing since the start. Main thread only. */
typedef struct frame_clock {
    uint64_t frames, late;
    uint64_t first_start_usec, last_start_usec;
    uint64_t frame_max_usec;         /* longest time from one frame's start to the next's */
    uint64_t dispatch_max_usec;      /* most time one frame spent serving scripts */
    uint64_t recent[FPS_WINDOW + 1]; /* starts of the last frames (a ring), for fps */
    frame_period period;
} frame_clock;

struct demo {
    demo_options opts;
    tether_host *host;
    /* The scene, in spawn order. Main thread only. */
    actor **actors;
    size_t count, cap;
    frame_clock clock;
    /* Calls served, for frame_stats() and the frame-timing line: atomic, since echo
     * runs on the I/O thread. */
    atomic_ullong calls;
    /* Actors ever spawned, deleted and released, for scene_stats(). Main thread only
     * (releases are MAIN too). */
    uint64_t spawned, deleted, released;
    /* The clients told of actors spawned, ticked and destroyed. Main thread only (the
     * services that change it, on_client and the frame loop all run there). */
    subscriber *subs;
    size_t sub_count, sub_cap;
    bool exiting; /* releases at exit are not announced */
};

static const tether_class actor_class;

/* ---- output ---------------------------------------------------------------------------- */

/* Print one line prefixed with the local time. Called from the main and I/O threads: the
 * stream lock keeps each line whole. */
static void say(const char *format, ...) TETHER_PRINTF(1, 2);

static void
say(const char *format, ...)
{
    struct timespec now;
    struct tm tm;
    char stamp[16];
    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, format);
    flockfile(stdout);
    printf("%s.%03ld  ", stamp, now.tv_nsec / 1000000);
    vprintf(format, ap);
    putchar('\n');
    funlockfile(stdout);
    va_end(ap);
}

/*
 * The library's log. Warnings and notices are printed as they come. Of the INFO lines,
 * only the records that clients send (tether_conn_log, Python's tether.LogHandler) are:
 * they start with "[NAME pid N]". The library's own INFO lines tell of clients arriving
 * and leaving, which on_client() tells in the demo's words.
 */
static void
on_log(void *userdata, int level, const char *message)
{
    const char *prefix = userdata ? userdata : "";
    if (level >= TETHER_LOG_INFO && message[0] != '[') {
        return;
    }
    if (level <= TETHER_LOG_WARNING) {
        say("%s%s: %s", prefix, level <= TETHER_LOG_ERROR ? "error" : "warning", message);
    } else {
        say("%s%s", prefix, message);
    }
}

static void subscriber_back(demo *d, tether_conn *conn);
static void subscriber_left(demo *d, tether_conn *conn);

static void
on_client(void *userdata, tether_conn *conn, int event)
{
    const char *version = tether_conn_get_peer_language_version(conn);
    if (event == TETHER_CLIENT_CONNECTED) {
        say("client '%s' (pid %lld, %s%s%s) connected", tether_conn_get_peer_name(conn),
            (long long)tether_conn_get_peer_pid(conn), tether_conn_get_peer_language(conn),
            *version ? " " : "", version);
        subscriber_back(userdata, conn);
    } else {
        say("client '%s' (pid %lld) left", tether_conn_get_peer_name(conn),
            (long long)tether_conn_get_peer_pid(conn));
        subscriber_left(userdata, conn);
    }
}

/* The value as text (JSON-like), newly allocated; NULL when out of memory. */
static char *
render(tether_value *value)
{
    char *text = NULL;
    if (!value || tether_value_to_string(value, &text) < 0) {
        return NULL;
    }
    return text;
}

/* A coordinate as Python prints a float, to a thousandth: 1.0, -2.5, 0.1 (not 1.11022e-16
 * for what sums of tenths leave over). */
static const char *
number_text(double v, char *buf, size_t size)
{
    if (v > -1e12 && v < 1e12) {
        v = (double)(long long)(v * 1000.0 + (v < 0 ? -0.5 : 0.5)) / 1000.0;
    }
    if (v == 0.0) {
        v = 0.0; /* no "-0.0" */
    }
    snprintf(buf, size, "%.6g", v);
    if (!strpbrk(buf, ".eni")) { /* no fraction, exponent, nan or inf: make it read as a float */
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, ".0");
    }
    return buf;
}

/* "(1.0, -2.5)" */
static const char *
position_text(double x, double y, char *buf, size_t size)
{
    char xs[32], ys[32];
    snprintf(buf, size, "(%s, %s)", number_text(x, xs, sizeof(xs)), number_text(y, ys, sizeof(ys)));
    return buf;
}

/* "<Actor 'Bob' at (1.0, 2.0)>", or "<Actor 'Bob' (deleted)>" */
static const char *
actor_repr(const actor *a, char *buf, size_t size)
{
    char pos[80];
    if (a->in_scene) {
        snprintf(buf, size, "<Actor '%s' at %s>", a->name,
                 position_text(a->x, a->y, pos, sizeof(pos)));
    } else {
        snprintf(buf, size, "<Actor '%s' (deleted)>", a->name);
    }
    return buf;
}

/* ---- replies, and the line each call prints -------------------------------------------- */

static const char *
peer_name(tether_request *req)
{
    return tether_conn_get_peer_name(tether_request_get_conn(req));
}

/* The actor a method was called on; NULL for a service. The only local objects of this
 * host are actors. */
static actor *
request_actor(tether_request *req)
{
    tether_object *obj = tether_request_get_object(req);
    return obj ? tether_object_get_userdata(obj) : NULL;
}

/*
 * Print "PEER calls METHOD(ARGS) -> OUTCOME", or "PEER calls METHOD(ARGS) on actor 'Bob'
 * -> OUTCOME" for a method; keyword arguments follow as **{...}. A NULL outcome (a
 * notification) prints none.
 */
static void
print_call(tether_request *req, const char *outcome)
{
    char *args = render(tether_request_get_args(req));
    char *kwargs = render(tether_request_get_kwargs(req));
    actor *a = request_actor(req);
    char target[MAX_NAME + 16] = "";
    if (a) {
        snprintf(target, sizeof(target), " on actor '%s'", a->name);
    }
    /* The arguments render as "[...]": printed without the brackets. */
    size_t len = args ? strlen(args) : 0;
    bool has_kwargs = kwargs && strcmp(kwargs, "{}") != 0;
    say("%s %s %s(%.*s%s%s)%s%s%s", peer_name(req),
        tether_request_is_notification(req) ? "notifies" : "calls", tether_request_get_method(req),
        len > 2 ? (int)len - 2 : 0, len > 2 ? args + 1 : "",
        has_kwargs ? (len > 2 ? ", **" : "**") : "", has_kwargs ? kwargs : "", target,
        outcome ? " -> " : "", outcome ? outcome : "");
    free(args);
    free(kwargs);
}

/* Reply with result (consumed, NULL: nil) and print the call unless --quiet, showing the
 * result as `shown` (NULL: as rendered). */
static int
reply(demo *d, tether_request *req, tether_value *result, const char *shown)
{
    atomic_fetch_add(&d->calls, 1);
    if (!d->opts.quiet) {
        char *text = shown || !result ? NULL : render(result);
        const char *outcome = shown ? shown : !result ? "null" : text ? text : "?";
        print_call(req, tether_request_is_notification(req) ? NULL : outcome);
        free(text);
    }
    int r = tether_request_reply_value(req, result);
    tether_value_unref(result);
    return r;
}

/* Reply with a value built from a format, as reply() does. */
static int
reply_format(demo *d, tether_request *req, const char *shown, const char *format, ...)
{
    tether_value *result = NULL;
    va_list ap;
    va_start(ap, format);
    int r = tether_value_newv(&result, format, ap);
    va_end(ap);
    return r < 0 ? r : reply(d, req, result, shown);
}

/* Reply with result (consumed) and, instead of the call, print what it did to the scene:
 * "PEER spawned actor 'Bob' at (0.0, 0.0)". Printed even with --quiet. */
static int reply_event(demo *d, tether_request *req, tether_value *result, const char *format, ...)
    TETHER_PRINTF(4, 5);

static int
reply_event(demo *d, tether_request *req, tether_value *result, const char *format, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, format);
    vsnprintf(what, sizeof(what), format, ap);
    va_end(ap);
    atomic_fetch_add(&d->calls, 1);
    say("%s %s", peer_name(req), what);
    int r = tether_request_reply_value(req, result);
    tether_value_unref(result);
    return r;
}

/* Reply an error, with the name of the Python exception a script should see, and print
 * the call with it, even with --quiet. Returns what the reply returned. */
static int fail(demo *d, tether_request *req, const char *type, const char *format, ...)
    TETHER_PRINTF(4, 5);

static int
fail(demo *d, tether_request *req, const char *type, const char *format, ...)
{
    char message[512], outcome[600];
    va_list ap;
    va_start(ap, format);
    vsnprintf(message, sizeof(message), format, ap);
    va_end(ap);
    atomic_fetch_add(&d->calls, 1);
    snprintf(outcome, sizeof(outcome), "%s: %s", type, message);
    print_call(req, outcome);
    return tether_request_reply_error(req, type, "%s", message);
}

/* ---- arguments ------------------------------------------------------------------------- */

/*
 * Services take their arguments by position or by keyword, as Python functions do. The
 * library reads arguments with format strings, whose item counts must match, so the
 * counts and keys are found by trying formats: "[**]" matches two arguments, "{**}" one
 * keyword, "{s*}" reads its key. Nothing here needs msgpack-c.
 */

/* "[*v*]": `items` items in open/close brackets, `letter` at index `at`, '*' elsewhere. */
static void
item_format(char *buf, char open, int items, int at, char letter)
{
    int len = 0;
    buf[len++] = open;
    for (int i = 0; i < items; i++) {
        buf[len++] = i == at ? letter : '*';
    }
    buf[len++] = open == '[' ? ']' : '}';
    buf[len] = '\0';
}

/* The number of items of an array, or of entries of a map; MAX_ARGS + 1 when more. */
static int
count_items(tether_value *value, bool map)
{
    char format[2 * MAX_ARGS + 3];
    for (int n = 0; n <= MAX_ARGS; n++) {
        item_format(format, map ? '{' : '[', map ? 2 * n : n, -1, '*');
        if (tether_value_read(value, NULL, format) == 0) {
            return n;
        }
    }
    return MAX_ARGS + 1;
}

static void
drop_args(tether_value **vals)
{
    for (int i = 0; i < MAX_ARGS; i++) {
        vals[i] = tether_value_unref(vals[i]);
    }
}

/*
 * Bind the request's positional and keyword arguments to the parameters (names, a
 * NULL-terminated list; the first `required` must be given): vals[i] becomes a reference
 * to the argument of names[i], or stays NULL. On a mismatch replies a TypeError, as
 * Python would word it, and returns false. The caller drops vals with drop_args().
 */
static bool
bind_args(demo *d, tether_request *req, const char *const *names, size_t required,
          tether_value **vals)
{
    const char *fn = tether_request_get_method(req);
    tether_value *args = tether_request_get_args(req);
    tether_value *kwargs = tether_request_get_kwargs(req);
    char format[2 * MAX_ARGS + 3];
    size_t n = 0;
    while (names[n]) {
        n++;
    }
    if (!args || !kwargs) {
        fail(d, req, "MemoryError", "out of memory");
        return false;
    }
    int npos = count_items(args, false);
    int nkw = count_items(kwargs, true);
    if ((size_t)npos > n) {
        fail(d, req, "TypeError", "%s() takes %s%zu argument%s (%s%d given)", fn,
             required < n ? "at most " : "", n, n == 1 ? "" : "s",
             npos > MAX_ARGS ? "more than " : "", npos > MAX_ARGS ? MAX_ARGS : npos);
        return false;
    }
    if (nkw > MAX_ARGS) {
        fail(d, req, "TypeError", "%s() takes at most %zu keyword arguments", fn, n);
        return false;
    }
    for (int i = 0; i < npos; i++) {
        item_format(format, '[', npos, i, 'v');
        tether_value_read(args, NULL, format, &vals[i]); /* the count matched: cannot fail */
    }
    for (int k = 0; k < nkw; k++) {
        const char *key = NULL;
        item_format(format, '{', 2 * nkw, 2 * k, 's');
        if (tether_value_read(kwargs, NULL, format, &key) < 0 || !key) {
            fail(d, req, "TypeError", "%s() keywords must be strings", fn);
            goto failed;
        }
        size_t i = 0;
        while (i < n && strcmp(names[i], key) != 0) {
            i++;
        }
        if (i == n) {
            fail(d, req, "TypeError", "%s() got an unexpected keyword argument '%s'", fn, key);
            goto failed;
        }
        if (vals[i]) {
            fail(d, req, "TypeError", "%s() got multiple values for argument '%s'", fn, key);
            goto failed;
        }
        item_format(format, '{', 2 * nkw, 2 * k + 1, 'v');
        tether_value_read(kwargs, NULL, format, &vals[i]);
    }
    for (size_t i = 0; i < required; i++) {
        if (!vals[i]) {
            fail(d, req, "TypeError", "%s() missing required argument '%s'", fn, names[i]);
            goto failed;
        }
    }
    return true;
failed:
    drop_args(vals);
    return false;
}

/* An argument of the wrong type: a TypeError naming the parameter. Returns false. */
static bool
wrong_type(demo *d, tether_request *req, const char *param, int r, tether_error *error)
{
    fail(d, req, "TypeError", "%s() argument '%s': %s", tether_request_get_method(req), param,
         error->message ? error->message : tether_strerror(r));
    tether_error_done(error);
    return false;
}

/* Read a bound argument, if it was given (otherwise *ret keeps its default). On a type
 * mismatch reply a TypeError and return false. */
static bool
read_double(demo *d, tether_request *req, const char *param, tether_value *value, double *ret)
{
    tether_error error = TETHER_ERROR_INIT;
    int r = value ? tether_value_read(value, &error, "d", ret) : 0;
    return r == 0 || wrong_type(d, req, param, r, &error);
}

/* As read_double; nil reads as NULL. The text lives as long as the value. */
static bool
read_string(demo *d, tether_request *req, const char *param, tether_value *value, const char **ret)
{
    tether_error error = TETHER_ERROR_INIT;
    int r = value ? tether_value_read(value, &error, "s", ret) : 0;
    return r == 0 || wrong_type(d, req, param, r, &error);
}

/* A new actor name: non-empty and not too long, else a ValueError. */
static bool
check_name(demo *d, tether_request *req, const char *param, const char *name)
{
    if (name && *name && strlen(name) <= MAX_NAME) {
        return true;
    }
    fail(d, req, "ValueError", "%s() argument '%s': a name of 1 to %d bytes is needed",
         tether_request_get_method(req), param, MAX_NAME);
    return false;
}

/* ---- the scene ------------------------------------------------------------------------- */

static actor *
scene_find(demo *d, const char *name)
{
    for (size_t i = 0; i < d->count; i++) {
        if (strcmp(d->actors[i]->name, name) == 0) {
            return d->actors[i];
        }
    }
    return NULL;
}

/* The actor behind an object, if it is one of ours: a proxy that a script passes back
 * arrives as the local object itself. */
static actor *
actor_of(tether_object *obj)
{
    if (!obj || tether_object_is_remote(obj) ||
        strcmp(tether_object_get_type_name(obj), actor_class.name) != 0) {
        return NULL;
    }
    return tether_object_get_userdata(obj);
}

/*
 * The actor an argument names: an Actor, or the name of one in the scene. Otherwise
 * replies TypeError, KeyError (no such name) or ReferenceError (a deleted actor) and
 * returns NULL.
 */
static actor *
read_actor(demo *d, tether_request *req, const char *param, tether_value *value)
{
    const char *fn = tether_request_get_method(req);
    tether_object *obj = NULL;
    if (tether_value_read(value, NULL, "o", &obj) == 0 && obj) {
        actor *a = actor_of(obj);
        if (!a) {
            fail(d, req, "TypeError", "%s() argument '%s': expected Actor or str, got %s", fn,
                 param, tether_object_get_type_name(obj));
        } else if (!a->in_scene) {
            fail(d, req, "ReferenceError", "actor '%s' was deleted", a->name);
            a = NULL;
        }
        tether_object_unref(obj); /* the request's arguments keep it alive */
        return a;
    }
    const char *name = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_value_read(value, &error, "s", &name);
    if (r < 0 || !name) {
        /* The reader says "expected str, got int": keep what it got. */
        const char *got = error.message ? strstr(error.message, "got ") : NULL;
        fail(d, req, "TypeError", "%s() argument '%s': expected Actor or str, %s", fn, param,
             got ? got : "got nil");
        tether_error_done(&error);
        return NULL;
    }
    actor *a = scene_find(d, name);
    if (!a) {
        fail(d, req, "KeyError", "no actor named '%s'", name);
    }
    return a;
}

/* Runs once the last reference to the actor's object is gone: the scene's (it was
 * deleted) and every client's proxy. MAIN, so in a dispatch of the main thread. */
static void
actor_release(void *userdata)
{
    actor *a = userdata;
    demo *d = a->demo;
    if (!d->exiting && !d->opts.quiet) {
        say("actor '%s' released: nobody holds it any more", a->name);
    }
    d->released++;
    free(a->name);
    free(a->label);
    free(a);
}

/* Make an actor and add it to the scene, which holds a reference to its object. */
static int
scene_add(demo *d, const char *name, double x, double y, const char *label, actor **ret)
{
    if (d->count == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 16;
        actor **actors = realloc(d->actors, cap * sizeof(*actors));
        if (!actors) {
            return TETHER_ENOMEM;
        }
        d->actors = actors;
        d->cap = cap;
    }
    actor *a = calloc(1, sizeof(*a));
    if (!a || !(a->name = strdup(name)) || !(a->label = strdup(label))) {
        if (a) {
            free(a->name);
            free(a);
        }
        return TETHER_ENOMEM;
    }
    a->demo = d;
    a->x = x;
    a->y = y;
    int r = tether_host_new_object(d->host, &actor_class, a, &a->obj);
    if (r < 0) {
        free(a->name);
        free(a->label);
        free(a);
        return r;
    }
    a->in_scene = true;
    d->actors[d->count++] = a;
    a->id = ++d->spawned;
    *ret = a;
    return 0;
}

/* Take the actor out of the scene and drop the scene's reference. The struct stays
 * until the release; when nobody else holds the object that may be at once (at exit,
 * once the host is gone), so the caller must not touch the actor afterwards. */
static void
scene_remove(demo *d, actor *a)
{
    for (size_t i = 0; i < d->count; i++) {
        if (d->actors[i] == a) {
            memmove(&d->actors[i], &d->actors[i + 1], (d->count - i - 1) * sizeof(*d->actors));
            d->count--;
            break;
        }
    }
    tether_object *obj = a->obj;
    a->obj = NULL;
    a->in_scene = false;
    d->deleted++;
    tether_object_unref(obj);
}

/*
 * The scene's actors as an array value. A format string fixes its number of items when
 * the program is compiled, so the array is assembled from msgpack bytes: a header, then
 * each actor's bytes as tether_object_get_msgpack() writes them, with the objects in
 * the same order.
 */
static int
actors_value(demo *d, tether_value **ret)
{
    size_t cap = 64 + 64 * d->count, len = 0;
    unsigned char *bytes = malloc(cap);
    tether_object **objs = malloc((d->count ? d->count : 1) * sizeof(*objs));
    int r = bytes && objs ? 0 : TETHER_ENOMEM;
    uint32_t n = (uint32_t)d->count;
    if (r == 0 && n < 16) {
        bytes[len++] = (unsigned char)(0x90 | n); /* fixarray */
    } else if (r == 0) {
        bytes[len++] = 0xdd; /* array 32, big-endian count */
        for (int shift = 24; shift >= 0; shift -= 8) {
            bytes[len++] = (unsigned char)(n >> shift);
        }
    }
    for (size_t i = 0; r == 0 && i < d->count; i++) {
        size_t size = 0;
        objs[i] = d->actors[i]->obj;
        r = tether_object_get_msgpack(objs[i], bytes + len, cap - len, &size);
        if (r == TETHER_EMSGSIZE) {
            cap = 2 * (len + size);
            unsigned char *more = realloc(bytes, cap);
            r = more ? tether_object_get_msgpack(objs[i], more + len, cap - len, &size)
                     : TETHER_ENOMEM;
            bytes = more ? more : bytes;
        }
        len += r == 0 ? size : 0;
    }
    if (r == 0) {
        r = tether_value_new_msgpack_objects(bytes, len, objs, d->count, ret);
    }
    free(bytes);
    free(objs);
    return r;
}

/* "[Actor 'Ann', Actor 'Bob']", shortened with "..." to fit. */
static const char *
actors_text(demo *d, char *buf, size_t size)
{
    size_t len = 0;
    len += (size_t)snprintf(buf, size, "[");
    for (size_t i = 0; i < d->count && len < size; i++) {
        if (len + strlen(d->actors[i]->name) + 16 > size) {
            len += (size_t)snprintf(buf + len, size - len, "%s...", i ? ", " : "");
            break;
        }
        len += (size_t)snprintf(buf + len, size - len, "%sActor '%s'", i ? ", " : "",
                                d->actors[i]->name);
    }
    if (len < size) {
        snprintf(buf + len, size - len, "]");
    }
    return buf;
}

/* ---- actor events: spawned, ticked and destroyed, for the scripts that subscribe -------- */

/*
 * A script that follows the scene, the way an engine's scripts attach a behaviour to each
 * actor, registers a service of its own (say on_actor_event(event, info)) and calls
 * subscribe_actor_events(method="on_actor_event", every=6). The host first calls that
 * service once, with ("subscribed", {"actors", "every", "fps"}): a call, not a
 * notification, so that a script without the service (a typo, or registered too late)
 * gets an error back from subscribe_actor_events rather than events that go nowhere. Its
 * reply is sent once that call has returned; then come notifications, in this order:
 *   ("spawned", INFO + {"actor": Actor, "existing": true})  each actor in the scene then
 *   ("spawned", INFO + {"actor": Actor, "existing": false}) each one spawned later
 *   ("ticked", INFO)      each actor, every `every` frames (0: never)
 *   ("destroyed", INFO)   an actor deleted
 * where INFO is {"id", "name", "x", "y", "label", "frame"}: id stays when the actor is
 * renamed, frame is the frame the event belongs to. Notifications, so the frame loop
 * never waits for a script. A subscription outlives a reset, as the script's services do:
 * when its process (the same name and pid) connects again within 10 seconds it is told
 * what it missed, the actors destroyed and then those spawned meanwhile (not the ticks).
 * It ends when the script does not come back, calls unsubscribe_actor_events(), or
 * stops reading (a notification that cannot be queued); subscribing again replaces it,
 * existing actors included.
 *
 * A tick is one notification per actor, of about 100 bytes: cheap for the host even at
 * every frame (every=1). The default is every 6 frames, 10 a second per actor, because a
 * script handles each one in Python and rarely needs more.
 */
#define TICK_EVERY_DEFAULT 6
#define TICK_EVERY_MAX 3600 /* a minute of frames */
#define MAX_METHOD 128
/* How long a subscription waits for its client to come back after its connection closed:
 * a reset client reconnects at once, the library's backoff starts at 50 ms. */
#define AWAY_USEC 10000000ull

static subscriber *
subscriber_of(demo *d, tether_conn *conn)
{
    for (size_t i = 0; i < d->sub_count; i++) {
        if (d->subs[i].conn == conn) {
            return &d->subs[i];
        }
    }
    return NULL;
}

static void
missed_clear(subscriber *s)
{
    for (size_t i = 0; i < s->missed_count; i++) {
        free(s->missed[i].name);
        free(s->missed[i].label);
    }
    free(s->missed);
    s->missed = NULL;
    s->missed_count = s->missed_cap = 0;
}

static void
subscriber_remove(demo *d, subscriber *s)
{
    size_t i = (size_t)(s - d->subs);
    tether_conn_unref(s->conn);
    free(s->peer);
    free(s->method);
    missed_clear(s);
    memmove(s, s + 1, (d->sub_count - i - 1) * sizeof(*s));
    d->sub_count--;
}

/* An event of actor a, as it is now. */
static actor_event
event_of(demo *d, const char *event, const actor *a, bool existing)
{
    return (actor_event){.event = event,
                         .id = a->id,
                         .frame = d->clock.frames,
                         .name = a->name,
                         .label = a->label,
                         .x = a->x,
                         .y = a->y,
                         .obj = a->obj,
                         .existing = existing};
}

/* Keep what a subscriber that is away must hear of when it comes back: the actors spawned
 * (by id: they are looked up then) and destroyed (a copy: they may be gone by then). */
static int
missed_add(subscriber *s, const actor_event *ev)
{
    bool spawned = strcmp(ev->event, "spawned") == 0;
    if (!spawned && strcmp(ev->event, "destroyed") != 0) {
        return 0; /* ticks are not made up for */
    }
    if (s->missed_count == s->missed_cap) {
        size_t cap = s->missed_cap ? 2 * s->missed_cap : 8;
        actor_event *missed = realloc(s->missed, cap * sizeof(*missed));
        if (!missed) {
            return TETHER_ENOMEM;
        }
        s->missed = missed;
        s->missed_cap = cap;
    }
    actor_event copy = *ev;
    copy.event = spawned ? "spawned" : "destroyed";
    copy.obj = NULL;
    copy.name = strdup(ev->name);
    copy.label = strdup(ev->label);
    if (!copy.name || !copy.label) {
        free(copy.name);
        free(copy.label);
        return TETHER_ENOMEM;
    }
    s->missed[s->missed_count++] = copy;
    return 0;
}

static int
notify_event(subscriber *s, const actor_event *ev)
{
    if (strcmp(ev->event, "spawned") == 0) {
        return tether_conn_notify(s->conn, s->method, "s{susssdsdsssusosb}", ev->event, "id",
                                  ev->id, "name", ev->name, "x", ev->x, "y", ev->y, "label",
                                  ev->label, "frame", ev->frame, "actor", ev->obj, "existing",
                                  (int)ev->existing);
    }
    return tether_conn_notify(s->conn, s->method, "s{susssdsdsssu}", ev->event, "id", ev->id,
                              "name", ev->name, "x", ev->x, "y", ev->y, "label", ev->label, "frame",
                              ev->frame);
}

/* The subscriber's client has left: keep the subscription for AWAY_USEC in case it is
 * the same process coming back (a reset). */
static void
subscriber_away(subscriber *s)
{
    s->conn = tether_conn_unref(s->conn);
    s->away_since_usec = tether_now_usec();
}

/* Tell the subscriber at index i of an event, or keep it for later while its client is
 * away. When it cannot be told (a client that stopped reading) or kept, drop it, saying
 * why, and return false. */
static bool
tell(demo *d, size_t i, const actor_event *ev)
{
    subscriber *s = &d->subs[i];
    int r = s->conn ? notify_event(s, ev) : TETHER_ENOTCONN;
    if (r < 0 && s->conn && !tether_conn_is_connected(s->conn)) {
        subscriber_away(s); /* closed, and on_client will tell: away from now */
    }
    if (r < 0 && !s->conn) {
        r = missed_add(s, ev);
    }
    if (r == 0) {
        return true;
    }
    say("actor events to '%s' stop: %s", s->peer, tether_strerror(r));
    subscriber_remove(d, s);
    return false;
}

/* Tell every subscriber of an event of actor a. */
static void
announce(demo *d, const char *event, const actor *a)
{
    actor_event ev = event_of(d, event, a, false);
    for (size_t i = 0; i < d->sub_count;) {
        i += tell(d, i, &ev) ? 1 : 0;
    }
}

/* Once a frame: "ticked" for each actor, to the subscribers whose period has come; and
 * the end of the subscriptions whose client has been away too long. */
static void
tick_actors(demo *d)
{
    uint64_t frame = d->clock.frames, now = tether_now_usec();
    for (size_t i = 0; i < d->sub_count;) {
        subscriber *s = &d->subs[i];
        bool stays = true;
        if (!s->conn) {
            if (now - s->away_since_usec > AWAY_USEC) {
                say("actor events to '%s' end: it did not come back", s->peer);
                subscriber_remove(d, s);
                stays = false;
            }
        } else if (s->every && frame % s->every == 0) {
            for (size_t k = 0; stays && k < d->count; k++) {
                actor_event ev = event_of(d, "ticked", d->actors[k], false);
                stays = tell(d, i, &ev);
            }
        }
        i += stays ? 1 : 0;
    }
}

/* A client left: its subscription, if any, waits for it to come back. */
static void
subscriber_left(demo *d, tether_conn *conn)
{
    subscriber *s = subscriber_of(d, conn);
    if (s) {
        subscriber_away(s);
    }
}

/* Was actor `id` spawned while the subscriber was away, by the first `count` of what it
 * missed? */
static bool
spawned_while_away(const actor_event *missed, size_t count, uint64_t id)
{
    for (size_t k = 0; k < count; k++) {
        if (missed[k].id == id && strcmp(missed[k].event, "spawned") == 0) {
            return true;
        }
    }
    return false;
}

/*
 * A client arrived. If it is a subscriber's process coming back (same name and pid: a
 * reset), its subscription goes on, and it is told what it missed: the actors destroyed
 * meanwhile that it knew of, then those spawned meanwhile that are still there.
 */
static void
subscriber_back(demo *d, tether_conn *conn)
{
    const char *peer = tether_conn_get_peer_name(conn);
    int64_t pid = tether_conn_get_peer_pid(conn);
    for (size_t i = 0; i < d->sub_count; i++) {
        subscriber *s = &d->subs[i];
        if (s->conn || s->pid != pid || strcmp(s->peer, peer) != 0) {
            continue;
        }
        s->conn = tether_conn_ref(conn);
        say("actor events to '%s' go on after its reconnection (%zu missed)", peer,
            s->missed_count);
        /* Taken out first: telling may make it away again, with a list of its own. */
        actor_event *missed = s->missed;
        size_t count = s->missed_count;
        s->missed = NULL;
        s->missed_count = s->missed_cap = 0;
        bool stays = true;
        for (size_t k = 0; stays && k < count; k++) {
            if (strcmp(missed[k].event, "destroyed") == 0) {
                /* An actor spawned and destroyed while away: neither is told. */
                stays = spawned_while_away(missed, k, missed[k].id) || tell(d, i, &missed[k]);
            }
        }
        for (size_t k = 0; stays && k < count; k++) {
            for (size_t a = 0; strcmp(missed[k].event, "spawned") == 0 && a < d->count; a++) {
                if (d->actors[a]->id == missed[k].id) {
                    actor_event ev = event_of(d, "spawned", d->actors[a], false);
                    stays = tell(d, i, &ev);
                    break;
                }
            }
        }
        subscriber tmp = {.missed = missed, .missed_count = count};
        missed_clear(&tmp);
        return;
    }
}

/* A subscribe_actor_events() call waiting for its client's answer to "subscribed". */
typedef struct pending_subscription {
    demo *demo;
    tether_request *req; /* held, to be replied once the client has answered */
    tether_conn *conn;   /* a reference */
    char *method;
    uint64_t every;
} pending_subscription;

static void
pending_free(pending_subscription *p)
{
    if (p) {
        tether_request_unref(p->req);
        tether_conn_unref(p->conn);
        free(p->method);
        free(p);
    }
}

/* The client answered "subscribed": make (or replace) its subscription, reply, and tell it
 * of the actors in the scene. Returns what replying returned. */
static int
subscribe(demo *d, pending_subscription *p)
{
    subscriber *s = subscriber_of(d, p->conn);
    if (!s) {
        if (d->sub_count == d->sub_cap) {
            size_t cap = d->sub_cap ? 2 * d->sub_cap : 4;
            subscriber *subs = realloc(d->subs, cap * sizeof(*subs));
            if (!subs) {
                return fail(d, p->req, "MemoryError", "out of memory");
            }
            d->subs = subs;
            d->sub_cap = cap;
        }
        s = &d->subs[d->sub_count++];
        *s = (subscriber){.conn = tether_conn_ref(p->conn),
                          .peer = strdup(tether_conn_get_peer_name(p->conn)),
                          .pid = tether_conn_get_peer_pid(p->conn)};
        if (!s->peer) {
            subscriber_remove(d, s);
            return fail(d, p->req, "MemoryError", "out of memory");
        }
    } else {
        free(s->method);
    }
    s->method = p->method;
    s->every = p->every;
    p->method = NULL;
    size_t i = (size_t)(s - d->subs);
    char every[64] = "no ticks";
    if (s->every) {
        snprintf(every, sizeof(every), "ticks every %llu frames", (unsigned long long)s->every);
    }
    atomic_fetch_add(&d->calls, 1);
    say("%s subscribed to actor events (%s() is told; %s)", peer_name(p->req), s->method, every);
    int r = tether_request_reply(p->req, "{sususi}", "actors", (uint64_t)d->count, "every",
                                 s->every, "fps", FPS);
    for (size_t k = 0; k < d->count; k++) {
        actor_event ev = event_of(d, "spawned", d->actors[k], true);
        if (!tell(d, i, &ev)) {
            break;
        }
    }
    return r;
}

/* The client's answer to ("subscribed", ...), on the main thread. */
static void
subscription_answered(tether_future *future, void *userdata)
{
    pending_subscription *p = userdata;
    demo *d = p->demo;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_future_get_result(future, NULL, &error);
    const char *who = tether_conn_get_peer_name(p->conn);
    if (d->exiting || !tether_conn_is_connected(p->conn)) {
        fail(d, p->req, "ConnectionError", "the client left before it was subscribed");
    } else if (r == TETHER_ENOENT) {
        fail(d, p->req, "ValueError",
             "client '%s' has no service '%s' to receive actor events: register it before "
             "subscribing",
             who, p->method);
    } else if (r == TETHER_EREMOTE) {
        /* Its service raised: pass the error on, type and traceback kept. */
        char outcome[600];
        snprintf(outcome, sizeof(outcome), "%s('subscribed', ...) raised %s: %s", p->method,
                 error.type ? error.type : "Exception", error.message ? error.message : "");
        atomic_fetch_add(&d->calls, 1);
        print_call(p->req, outcome);
        tether_request_reply_error_full(p->req, &error);
    } else if (r < 0) {
        fail(d, p->req, "RuntimeError", "calling %s('subscribed', ...) failed: %s", p->method,
             tether_strerror(r));
    } else {
        subscribe(d, p);
    }
    tether_error_done(&error);
    tether_future_unref(future);
    pending_free(p);
}

/* subscribe_actor_events(method="on_actor_event", every=6) -> {"actors", "every", "fps"} */
static int
serve_subscribe_actor_events(tether_request *req, void *userdata)
{
    static const char *const params[] = {"method", "every", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    tether_error error = TETHER_ERROR_INIT;
    const char *method = NULL;
    int64_t every = TICK_EVERY_DEFAULT;
    int r = 0;
    if (!bind_args(d, req, params, 0, args) || !read_string(d, req, "method", args[0], &method)) {
        drop_args(args);
        return 0;
    }
    method = method ? method : "on_actor_event";
    if (args[1] && (r = tether_value_read(args[1], &error, "x", &every)) < 0) {
        wrong_type(d, req, "every", r, &error);
        r = 0;
    } else if (!*method || strlen(method) > MAX_METHOD) {
        r = fail(d, req, "ValueError",
                 "subscribe_actor_events() argument 'method': the name of a service of yours "
                 "(1 to %d bytes) is needed",
                 MAX_METHOD);
    } else if (every < 0 || every > TICK_EVERY_MAX) {
        r = fail(d, req, "ValueError",
                 "subscribe_actor_events() argument 'every': 0 (no ticks) to %d frames, not "
                 "%lld",
                 TICK_EVERY_MAX, (long long)every);
    } else {
        pending_subscription *p = calloc(1, sizeof(*p));
        tether_conn *conn = tether_request_get_conn(req);
        tether_future *future = NULL;
        if (!p || !(p->method = strdup(method))) {
            free(p);
            drop_args(args);
            return TETHER_ENOMEM;
        }
        p->demo = d;
        p->every = (uint64_t)every;
        p->conn = tether_conn_ref(conn);
        p->req = tether_request_ref(req);
        r = tether_conn_call_async(conn, method, NULL, &future, "s{sususi}", "subscribed", "actors",
                                   (uint64_t)d->count, "every", p->every, "fps", FPS);
        r = r < 0
                ? r
                : tether_future_set_callback(future, TETHER_CONTEXT_MAIN, subscription_answered, p);
        if (r < 0) {
            tether_future_unref(future);
            r = fail(d, req, "RuntimeError", "calling %s('subscribed', ...) failed: %s", method,
                     tether_strerror(r));
            pending_free(p);
        }
    }
    drop_args(args);
    return r;
}

/* unsubscribe_actor_events() -> whether the caller was subscribed */
static int
serve_unsubscribe_actor_events(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    if (!bind_args(d, req, params, 0, args)) {
        return 0;
    }
    subscriber *s = subscriber_of(d, tether_request_get_conn(req));
    bool was = s != NULL;
    if (s) {
        subscriber_remove(d, s);
    }
    tether_value *result = NULL;
    int r = tether_value_new(&result, "b", (int)was);
    return r < 0 ? r
                 : reply_event(d, req, result, "%s actor events",
                               was ? "unsubscribed from" : "was not subscribed to");
}

/* ---- what scripts do to actors, by service or by method ------------------------------- */

static int
spawn(demo *d, tether_request *req, const char *name, double x, double y, const char *label)
{
    char pos[80];
    if (!check_name(d, req, "name", name)) {
        return 0;
    }
    if (scene_find(d, name)) {
        return fail(d, req, "ValueError", "an actor named '%s' exists already", name);
    }
    actor *a = NULL;
    tether_value *result = NULL;
    int r = scene_add(d, name, x, y, label, &a);
    r = r < 0 ? r : tether_value_new(&result, "o", a->obj);
    if (r < 0) {
        return r;
    }
    r = reply_event(d, req, result, "spawned actor '%s' at %s%s%s%s", name,
                    position_text(x, y, pos, sizeof(pos)), *label ? ", label '" : "", label,
                    *label ? "'" : "");
    announce(d, "spawned", a);
    return r;
}

static int
move_by(demo *d, tether_request *req, actor *a, double dx, double dy)
{
    a->x += dx;
    a->y += dy;
    return reply_format(d, req, NULL, "[dd]", a->x, a->y);
}

static int
rename_to(demo *d, tether_request *req, actor *a, const char *param, const char *name)
{
    if (!check_name(d, req, param, name)) {
        return 0;
    }
    actor *other = scene_find(d, name);
    if (other && other != a) {
        return fail(d, req, "ValueError", "an actor named '%s' exists already", name);
    }
    char *copy = strdup(name);
    if (!copy) {
        return TETHER_ENOMEM;
    }
    char old[MAX_NAME + 1];
    snprintf(old, sizeof(old), "%s", a->name);
    free(a->name);
    a->name = copy;
    return reply_event(d, req, NULL, "renamed actor '%s' to '%s'", old, a->name);
}

static int
set_label(demo *d, tether_request *req, actor *a, const char *label)
{
    char *copy = strdup(label ? label : "");
    if (!copy) {
        return TETHER_ENOMEM;
    }
    free(a->label);
    a->label = copy;
    return reply(d, req, NULL, NULL);
}

static int
delete_actor(demo *d, tether_request *req, actor *a)
{
    /* Print first: the request keeps the actor alive, but it is gone from the scene. */
    int r = reply_event(d, req, NULL, "deleted actor '%s'", a->name);
    announce(d, "destroyed", a);
    scene_remove(d, a);
    return r;
}

/* ---- the Actor class: its methods, MAIN like the scene they touch ---------------------- */

/* The actor a method was called on, if it is still in the scene; else replies a
 * ReferenceError and returns NULL. */
static actor *
live_actor(tether_request *req, void *userdata)
{
    actor *a = userdata;
    if (!a->in_scene) {
        fail(a->demo, req, "ReferenceError", "actor '%s' was deleted", a->name);
        return NULL;
    }
    return a;
}

static int
actor_move(tether_request *req, void *userdata)
{
    static const char *const params[] = {"dx", "dy", NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    double dx = 0, dy = 0;
    int r = 0;
    if (a && bind_args(a->demo, req, params, 2, args) &&
        read_double(a->demo, req, "dx", args[0], &dx) &&
        read_double(a->demo, req, "dy", args[1], &dy)) {
        r = move_by(a->demo, req, a, dx, dy);
    }
    drop_args(args);
    return r;
}

static int
actor_position(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    int r = 0;
    if (a && bind_args(a->demo, req, params, 0, args)) {
        r = reply_format(a->demo, req, NULL, "[dd]", a->x, a->y);
    }
    return r;
}

static int
actor_rename(tether_request *req, void *userdata)
{
    static const char *const params[] = {"new_name", NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    const char *name = NULL;
    int r = 0;
    if (a && bind_args(a->demo, req, params, 1, args) &&
        read_string(a->demo, req, "new_name", args[0], &name)) {
        r = rename_to(a->demo, req, a, "new_name", name);
    }
    drop_args(args);
    return r;
}

static int
actor_set_label(tether_request *req, void *userdata)
{
    static const char *const params[] = {"text", NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    const char *text = NULL;
    int r = 0;
    if (a && bind_args(a->demo, req, params, 1, args) &&
        read_string(a->demo, req, "text", args[0], &text)) {
        r = set_label(a->demo, req, a, text);
    }
    drop_args(args);
    return r;
}

static int
actor_delete(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    return a && bind_args(a->demo, req, params, 0, args) ? delete_actor(a->demo, req, a) : 0;
}

static int
actor_info(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    if (!a || !bind_args(a->demo, req, params, 0, args)) {
        return 0;
    }
    return reply_format(a->demo, req, NULL, "{sssdsdss}", "name", a->name, "x", a->x, "y", a->y,
                        "label", a->label);
}

/* actor.NAME in Python: name and alive even once deleted, x, y and label while in the
 * scene. */
static int
actor_getattr(tether_request *req, void *userdata)
{
    static const char *const params[] = {"name", NULL};
    actor *a = userdata;
    demo *d = a->demo;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *attr = NULL;
    int r = 0;
    if (!bind_args(d, req, params, 1, args) || !read_string(d, req, "name", args[0], &attr)) {
        return 0;
    }
    attr = attr ? attr : "";
    if (strcmp(attr, "name") == 0) {
        r = reply_format(d, req, NULL, "s", a->name);
    } else if (strcmp(attr, "alive") == 0) {
        r = reply_format(d, req, NULL, "b", a->in_scene);
    } else if (strcmp(attr, "x") != 0 && strcmp(attr, "y") != 0 && strcmp(attr, "label") != 0) {
        r = fail(d, req, "AttributeError", "'Actor' object has no attribute '%s'", attr);
    } else if (live_actor(req, a)) {
        r = attr[0] == 'x'   ? reply_format(d, req, NULL, "d", a->x)
            : attr[0] == 'y' ? reply_format(d, req, NULL, "d", a->y)
                             : reply_format(d, req, NULL, "s", a->label);
    }
    drop_args(args);
    return r;
}

/* actor.NAME = VALUE in Python: renames, relabels or moves. */
static int
actor_setattr(tether_request *req, void *userdata)
{
    static const char *const params[] = {"name", "value", NULL};
    actor *a = live_actor(req, userdata);
    tether_value *args[MAX_ARGS] = {NULL};
    const char *attr = NULL, *text = NULL;
    double v = 0;
    int r = 0;
    if (!a || !bind_args(a->demo, req, params, 2, args) ||
        !read_string(a->demo, req, "name", args[0], &attr)) {
        drop_args(args);
        return 0;
    }
    demo *d = a->demo;
    attr = attr ? attr : "";
    if (strcmp(attr, "name") == 0) {
        if (read_string(d, req, "value", args[1], &text)) {
            r = rename_to(d, req, a, "value", text);
        }
    } else if (strcmp(attr, "label") == 0) {
        if (read_string(d, req, "value", args[1], &text)) {
            r = set_label(d, req, a, text);
        }
    } else if (strcmp(attr, "x") == 0 || strcmp(attr, "y") == 0) {
        if (read_double(d, req, "value", args[1], &v)) {
            *(attr[0] == 'x' ? &a->x : &a->y) = v;
            r = reply(d, req, NULL, NULL);
        }
    } else {
        r = fail(d, req, "AttributeError", "'Actor' attribute '%s' cannot be set", attr);
    }
    drop_args(args);
    return r;
}

/* repr() and str() of a proxy; they work on a deleted actor too. */
static int
actor_repr_method(tether_request *req, void *userdata)
{
    char repr[MAX_NAME + 96];
    actor *a = userdata;
    return reply_format(a->demo, req, NULL, "s", actor_repr(a, repr, sizeof(repr)));
}

/* bool() of a proxy: whether the actor is still in the scene. */
static int
actor_bool(tether_request *req, void *userdata)
{
    actor *a = userdata;
    return reply_format(a->demo, req, NULL, "b", a->in_scene);
}

/* dir() of a proxy, for a REPL's completion. */
static int
actor_dir(tether_request *req, void *userdata)
{
    actor *a = userdata;
    return reply_format(a->demo, req, NULL, "[sssssssssss]", "alive", "delete", "info", "label",
                        "move", "name", "position", "rename", "set_label", "x", "y");
}

static const tether_method actor_methods[] = {
    {"move", TETHER_CONTEXT_MAIN, actor_move},
    {"position", TETHER_CONTEXT_MAIN, actor_position},
    {"rename", TETHER_CONTEXT_MAIN, actor_rename},
    {"set_label", TETHER_CONTEXT_MAIN, actor_set_label},
    {"delete", TETHER_CONTEXT_MAIN, actor_delete},
    {"info", TETHER_CONTEXT_MAIN, actor_info},
    {"__getattr__", TETHER_CONTEXT_MAIN, actor_getattr},
    {"__setattr__", TETHER_CONTEXT_MAIN, actor_setattr},
    {"__repr__", TETHER_CONTEXT_MAIN, actor_repr_method},
    {"__str__", TETHER_CONTEXT_MAIN, actor_repr_method},
    {"__bool__", TETHER_CONTEXT_MAIN, actor_bool},
    {"__dir__", TETHER_CONTEXT_MAIN, actor_dir},
    {NULL, 0, NULL},
};

/* No fallback: the library answers a proxy's "__tether_describe__" from the table. */
static const tether_class actor_class = {
    .name = "Actor",
    .methods = actor_methods,
    .release = actor_release,
    .release_context = TETHER_CONTEXT_MAIN, /* it counts and prints: main thread */
};

/* ---- the host's services --------------------------------------------------------------- */

static int
serve_spawn_actor(tether_request *req, void *userdata)
{
    static const char *const params[] = {"name", "x", "y", "label", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *name = NULL, *label = NULL;
    double x = 0, y = 0;
    int r = 0;
    if (bind_args(d, req, params, 1, args) && read_string(d, req, "name", args[0], &name) &&
        read_double(d, req, "x", args[1], &x) && read_double(d, req, "y", args[2], &y) &&
        read_string(d, req, "label", args[3], &label)) {
        r = spawn(d, req, name, x, y, label ? label : "");
    }
    drop_args(args);
    return r;
}

static int
serve_list_actors(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    tether_value *result = NULL;
    char shown[256];
    if (!bind_args(d, req, params, 0, args)) {
        return 0;
    }
    int r = actors_value(d, &result);
    return r < 0 ? r : reply(d, req, result, actors_text(d, shown, sizeof(shown)));
}

static int
serve_get_actor(tether_request *req, void *userdata)
{
    static const char *const params[] = {"name", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *name = NULL;
    char repr[MAX_NAME + 96];
    int r = 0;
    if (bind_args(d, req, params, 1, args) && read_string(d, req, "name", args[0], &name)) {
        actor *a = name ? scene_find(d, name) : NULL;
        r = a ? reply_format(d, req, actor_repr(a, repr, sizeof(repr)), "o", a->obj)
              : fail(d, req, "KeyError", "no actor named '%s'", name ? name : "None");
    }
    drop_args(args);
    return r;
}

static int
serve_move_actor(tether_request *req, void *userdata)
{
    static const char *const params[] = {"actor", "dx", "dy", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    double dx = 0, dy = 0;
    actor *a = NULL;
    int r = 0;
    if (bind_args(d, req, params, 3, args) && read_double(d, req, "dx", args[1], &dx) &&
        read_double(d, req, "dy", args[2], &dy) && (a = read_actor(d, req, "actor", args[0]))) {
        r = move_by(d, req, a, dx, dy);
    }
    drop_args(args);
    return r;
}

static int
serve_rename_actor(tether_request *req, void *userdata)
{
    static const char *const params[] = {"actor", "new_name", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *name = NULL;
    actor *a = NULL;
    int r = 0;
    if (bind_args(d, req, params, 2, args) && read_string(d, req, "new_name", args[1], &name) &&
        (a = read_actor(d, req, "actor", args[0]))) {
        r = rename_to(d, req, a, "new_name", name);
    }
    drop_args(args);
    return r;
}

static int
serve_delete_actor(tether_request *req, void *userdata)
{
    static const char *const params[] = {"actor", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    actor *a = NULL;
    int r = 0;
    if (bind_args(d, req, params, 1, args) && (a = read_actor(d, req, "actor", args[0]))) {
        r = delete_actor(d, req, a);
    }
    drop_args(args);
    return r;
}

/* log(message): meant as a notification. */
static int
serve_log(tether_request *req, void *userdata)
{
    static const char *const params[] = {"message", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *message = NULL;
    if (bind_args(d, req, params, 1, args) && read_string(d, req, "message", args[0], &message)) {
        atomic_fetch_add(&d->calls, 1);
        say("[%s] %s", peer_name(req), message ? message : "None");
        tether_request_reply_value(req, NULL);
    }
    drop_args(args);
    return 0;
}

static double
clock_fps(const frame_clock *c)
{
    uint64_t n = c->frames > FPS_WINDOW ? FPS_WINDOW : c->frames ? c->frames - 1 : 0;
    uint64_t newest = c->recent[c->frames % (FPS_WINDOW + 1)];
    uint64_t oldest = c->recent[(c->frames - n) % (FPS_WINDOW + 1)];
    return n && newest > oldest ? (double)n * 1e6 / (double)(newest - oldest) : 0.0;
}

static int
serve_frame_stats(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    demo *d = userdata;
    const frame_clock *c = &d->clock;
    tether_value *args[MAX_ARGS] = {NULL};
    if (!bind_args(d, req, params, 0, args)) {
        return 0;
    }
    double mean = c->frames > 1 ? (double)(c->last_start_usec - c->first_start_usec) /
                                      (double)(c->frames - 1) / 1000.0
                                : 0.0;
    return reply_format(d, req, NULL, "{susdsdsdsdsusu}", "frames", c->frames, "fps", clock_fps(c),
                        "frame_ms_mean", mean, "frame_ms_max", (double)c->frame_max_usec / 1000.0,
                        "dispatch_ms_max", (double)c->dispatch_max_usec / 1000.0, "late_frames",
                        c->late, "calls", (uint64_t)atomic_load(&d->calls));
}

/*
 * scene_stats(): the actors in the scene, and those ever spawned, deleted and released.
 * An actor deleted while a script still holds a proxy to it is released only when the
 * last proxy goes: deleted minus released is how many such actors are still held.
 */
static int
serve_scene_stats(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    if (!bind_args(d, req, params, 0, args)) {
        return 0;
    }
    return reply_format(d, req, NULL, "{susususu}", "actors", (uint64_t)d->count, "spawned",
                        d->spawned, "deleted", d->deleted, "released", d->released);
}

/* globals(): what a REPL puts in its namespace. */
static int
serve_globals(tether_request *req, void *userdata)
{
    static const char *const params[] = {NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    tether_value *actors = NULL;
    char shown[320], list[256];
    if (!bind_args(d, req, params, 0, args)) {
        return 0;
    }
    int r = actors_value(d, &actors);
    snprintf(shown, sizeof(shown), "{\"actors\": %s, \"frame\": %llu, \"fps\": %.1f}",
             actors_text(d, list, sizeof(list)), (unsigned long long)d->clock.frames,
             clock_fps(&d->clock));
    r = r < 0 ? r
              : reply_format(d, req, shown, "{svsusd}", "actors", actors, "frame", d->clock.frames,
                             "fps", clock_fps(&d->clock));
    tether_value_unref(actors);
    return r;
}

/* add(a, b): integers, or numbers as floats. */
static int
serve_add(tether_request *req, void *userdata)
{
    static const char *const params[] = {"a", "b", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    int64_t a, b;
    double x, y;
    int r = 0;
    if (!bind_args(d, req, params, 2, args)) {
        return 0;
    }
    if (tether_value_read(args[0], NULL, "x", &a) == 0 &&
        tether_value_read(args[1], NULL, "x", &b) == 0) {
        if ((b > 0 && a > INT64_MAX - b) || (b < 0 && a < INT64_MIN - b)) {
            r = fail(d, req, "OverflowError", "integer overflow");
        } else {
            r = reply_format(d, req, NULL, "x", a + b);
        }
    } else if (read_double(d, req, "a", args[0], &x) && read_double(d, req, "b", args[1], &y)) {
        r = reply_format(d, req, NULL, "d", x + y);
    }
    drop_args(args);
    return r;
}

/* greet(name): "Hello, NAME!". */
static int
serve_greet(tether_request *req, void *userdata)
{
    static const char *const params[] = {"name", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    const char *name = NULL;
    char text[256];
    int r = 0;
    if (bind_args(d, req, params, 1, args) && read_string(d, req, "name", args[0], &name)) {
        snprintf(text, sizeof(text), "Hello, %s!", name ? name : "stranger");
        r = reply_format(d, req, NULL, "s", text);
    }
    drop_args(args);
    return r;
}

/* echo(value): the value itself. IO: the fast path, on the I/O thread, never blocking. */
static int
serve_echo(tether_request *req, void *userdata)
{
    static const char *const params[] = {"value", NULL};
    demo *d = userdata;
    tether_value *args[MAX_ARGS] = {NULL};
    int r = 0;
    if (bind_args(d, req, params, 1, args)) {
        r = reply(d, req, tether_value_ref(args[0]), NULL);
    }
    drop_args(args);
    return r;
}

/* ---- tether.*: the troubleshooting services the `tether` command line uses ----------- */

/*
 * The `tether` command line (python/tether/_cli.py) lists a host's clients, resets and
 * disconnects them, and forwards eval/exec to them through these services. They are the
 * host-side functions tether_host_list_clients, tether_host_reset_client and
 * tether_host_disconnect_client offered to remote callers; every host that wants the
 * command line to see into it registers the same. IO context: they touch no scene, and
 * the library's functions they call are safe on any thread and never block.
 */

/* Every service of the demo, for add_services and tether.services. */
static const struct {
    const char *name;
    tether_context context;
    tether_handler_fn handler;
} demo_services[] = {
    {"spawn_actor", TETHER_CONTEXT_MAIN, serve_spawn_actor},
    {"list_actors", TETHER_CONTEXT_MAIN, serve_list_actors},
    {"get_actor", TETHER_CONTEXT_MAIN, serve_get_actor},
    {"move_actor", TETHER_CONTEXT_MAIN, serve_move_actor},
    {"rename_actor", TETHER_CONTEXT_MAIN, serve_rename_actor},
    {"delete_actor", TETHER_CONTEXT_MAIN, serve_delete_actor},
    {"log", TETHER_CONTEXT_MAIN, serve_log},
    {"frame_stats", TETHER_CONTEXT_MAIN, serve_frame_stats},
    {"scene_stats", TETHER_CONTEXT_MAIN, serve_scene_stats},
    {"globals", TETHER_CONTEXT_MAIN, serve_globals},
    {"subscribe_actor_events", TETHER_CONTEXT_MAIN, serve_subscribe_actor_events},
    {"unsubscribe_actor_events", TETHER_CONTEXT_MAIN, serve_unsubscribe_actor_events},
    {"add", TETHER_CONTEXT_MAIN, serve_add},
    {"greet", TETHER_CONTEXT_MAIN, serve_greet},
    {"echo", TETHER_CONTEXT_IO, serve_echo},
    {"tether.globals", TETHER_CONTEXT_MAIN, serve_globals},
};
#define DEMO_SERVICE_COUNT (sizeof(demo_services) / sizeof(demo_services[0]))

static int
add_services(demo *d)
{
    for (size_t i = 0; i < DEMO_SERVICE_COUNT; i++) {
        int r = tether_host_add_service(d->host, demo_services[i].name, demo_services[i].context,
                                        demo_services[i].handler, d);
        if (r < 0) {
            return r;
        }
    }
    return 0;
}

/* ---- the frame loop -------------------------------------------------------------------- */

static void
frame_started(frame_clock *c, uint64_t start, bool late)
{
    frame_period *p = &c->period;
    if (c->frames > 0) {
        uint64_t interval = start - c->last_start_usec;
        c->frame_max_usec = interval > c->frame_max_usec ? interval : c->frame_max_usec;
        p->frame_max_usec = interval > p->frame_max_usec ? interval : p->frame_max_usec;
    } else {
        c->first_start_usec = start;
    }
    c->late += late;
    p->late += late;
    c->frames++;
    p->frames++;
    c->last_start_usec = start;
    c->recent[c->frames % (FPS_WINDOW + 1)] = start;
}

static void
frame_dispatched(frame_clock *c, uint64_t usec)
{
    c->dispatch_max_usec = usec > c->dispatch_max_usec ? usec : c->dispatch_max_usec;
    if (usec > c->period.dispatch_max_usec) {
        c->period.dispatch_max_usec = usec;
    }
}

/* Every second with calls in it, or every five seconds, print the frame timing since
 * the last such line: it shows whether scripts held up the loop. */
static void
print_timing(demo *d, uint64_t now)
{
    frame_period *p = &d->clock.period;
    uint64_t calls = atomic_load(&d->calls);
    uint64_t elapsed = now - p->start_usec;
    if (elapsed < (calls > p->calls_before ? TIMING_BUSY_USEC : TIMING_IDLE_USEC)) {
        return;
    }
    say("frames %llu  fps %.1f  frame max %.1f ms  dispatch max %.2f ms  late %llu  "
        "calls %llu  actors %zu  clients %d",
        (unsigned long long)p->frames, (double)p->frames * 1e6 / (double)elapsed,
        (double)p->frame_max_usec / 1000.0, (double)p->dispatch_max_usec / 1000.0,
        (unsigned long long)p->late, (unsigned long long)(calls - p->calls_before), d->count,
        tether_host_get_client_count(d->host));
    *p = (frame_period){.start_usec = now, .calls_before = calls};
}

/* Dispatch queued MAIN work for up to budget_usec, adding the time it took to *spent. */
static int
dispatch_for(demo *d, uint64_t budget_usec, uint64_t *spent)
{
    uint64_t start = tether_now_usec();
    int r = tether_host_dispatch(d->host, budget_usec);
    *spent += tether_now_usec() - start;
    if (r < 0) {
        say("dispatch failed: %s", tether_strerror(r));
    }
    return r;
}

/*
 * The end of the frame, until `due`. An engine would wait for the display here, so this
 * time is free: MAIN work that arrives meanwhile is served at once, while the frame's
 * budget lasts, rather than at the next frame's dispatch step. A script making one call
 * after another then gets an answer in a round trip, not one answer per frame (a REPL
 * listing ten actors' names would otherwise take ten frames), and the frame still gives
 * scripts no more than its budget. Once the budget is spent the fd is not watched: it
 * stays readable while work is queued, and would wake this loop again and again.
 */
static int
idle_until(demo *d, uint64_t due, uint64_t *spent)
{
    for (;;) {
        uint64_t now = tether_now_usec();
        if (now >= due) {
            return 0;
        }
        uint64_t left = *spent < DISPATCH_BUDGET_USEC ? DISPATCH_BUDGET_USEC - *spent : 0;
        struct pollfd pfd = {.fd = left ? tether_host_get_fd(d->host) : -1, .events = POLLIN};
        struct timespec wait = {.tv_sec = (time_t)((due - now) / 1000000),
                                .tv_nsec = (long)((due - now) % 1000000) * 1000};
        if (ppoll(&pfd, 1, &wait, NULL) > 0 && (pfd.revents & POLLIN)) {
            now = tether_now_usec();
            uint64_t budget = now < due && due - now < left ? due - now : left;
            int r = now < due ? dispatch_for(d, budget, spent) : 0;
            if (r < 0) {
                return r;
            }
        }
    }
}

/*
 * The engine's frame loop, 60 times a second: a frame starts, the engine would simulate
 * and render, tether gets its dispatch step (a budget of 2 ms), then the frame idles
 * until the next one is due (serving scripts within the same budget, see idle_until).
 * A frame that starts late does not make the next ones hurry to catch up: the schedule
 * restarts from it. Stops at SIGINT or SIGTERM, or after `seconds`. Returns 0, or 1 if
 * dispatching failed.
 */
static int
run_frames(demo *d, const sigset_t *signals, long seconds)
{
    const struct timespec no_wait = {0, 0};
    uint64_t due = tether_now_usec();
    uint64_t stop_usec = seconds > 0 ? due + (uint64_t)seconds * 1000000 : 0;
    d->clock.period = (frame_period){.start_usec = due, .calls_before = atomic_load(&d->calls)};
    for (;;) {
        uint64_t start = tether_now_usec();
        bool late = start > due + LATE_USEC;
        due = late ? start : due;
        frame_started(&d->clock, start, late);

        /* An engine would simulate and render here; the scripts that subscribed hear
         * of it. */
        tick_actors(d);

        uint64_t spent = 0;
        if (dispatch_for(d, DISPATCH_BUDGET_USEC, &spent) < 0) {
            return 1;
        }
        bool done = false;
        int sig = sigtimedwait(signals, NULL, &no_wait);
        if (sig == SIGINT || sig == SIGTERM) {
            say("stopping (%s)", sig == SIGINT ? "SIGINT" : "SIGTERM");
            done = true;
        } else if (stop_usec && start >= stop_usec) {
            say("stopping after %ld seconds", seconds);
            done = true;
        }
        if (done) {
            frame_dispatched(&d->clock, spent);
            return 0;
        }
        due += FRAME_USEC;
        if (idle_until(d, due, &spent) < 0) {
            return 1;
        }
        frame_dispatched(&d->clock, spent);
        print_timing(d, tether_now_usec());
    }
}

/* ---- running --------------------------------------------------------------------------- */

/* The directory of this program, relative to the working directory when below it; for
 * the commands printed at start. NULL when unknown. */
static char *
program_dir(void)
{
    char exe[PATH_MAX], cwd[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        return NULL;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) {
        return NULL;
    }
    *slash = '\0';
    size_t len = getcwd(cwd, sizeof(cwd)) ? strlen(cwd) : 0;
    if (len > 1 && strncmp(exe, cwd, len) == 0 && exe[len] == '/') {
        return strdup(exe + len + 1);
    }
    return strdup(exe);
}

static bool
exists_in(const char *dir, const char *name, char *path, size_t size)
{
    snprintf(path, size, "%s/%s", dir ? dir : ".", name);
    return dir && access(path, F_OK) == 0;
}

static void
print_how_to_connect(demo *d)
{
    char *dir = program_dir();
    char client[PATH_MAX + 32], package[PATH_MAX + 32];
    bool have_client = exists_in(dir, "example-hello_client", client, sizeof(client));
    bool have_python = exists_in(dir, "python/tether/__init__.py", package, sizeof(package));
    const char *address = tether_host_get_address(d->host);
    printf("\n%s: a scene of actors, %d frames per second, scripts served on the main thread\n"
           "within %llu ms of each frame.\n"
           "  spawn_actor(name, x=0.0, y=0.0, label=\"\") -> Actor   list_actors()   "
           "get_actor(name)\n"
           "  move_actor(actor, dx, dy)   rename_actor(actor, new_name)   delete_actor(actor)\n"
           "  log(message)   frame_stats()   scene_stats()   globals()\n"
           "  subscribe_actor_events(method=\"on_actor_event\", every=6)   "
           "unsubscribe_actor_events()\n"
           "  add(a, b)   greet(name)   echo(value)\n"
           "  Actor: move(dx, dy)  position()  rename(new_name)  set_label(text)  delete()  "
           "info(),\n"
           "         and the attributes name, x, y, label, alive\n",
           d->opts.name, FPS, DISPATCH_BUDGET_USEC / 1000);
    printf("Connect a client from another shell:\n");
    printf("    TETHER_ADDRESS=%s %s\n", address, have_client ? client : "your-client");
    printf("    %s%s%spython3 -i -c 'import tether; root = tether.connect(name=\"repl\", "
           "address=\"%s\").root'\n",
           have_python ? "PYTHONPATH=" : "", have_python ? dir : "", have_python ? "/python " : "",
           d->opts.name);
    printf("    >>> bob = root.spawn_actor(\"Bob\", label=\"hero\"); bob.move(1, 2); print(bob)\n");
    if (d->opts.tcp) {
        printf("or over TCP (same user: the token is read from %s):\n",
               tether_host_get_token_path(d->host));
        printf("    TETHER_ADDRESS=tcp:127.0.0.1:%d %s\n", tether_host_get_tcp_port(d->host),
               have_client ? client : "your-client");
    }
    char cli[PATH_MAX + 32];
    if (exists_in(dir, "tether", cli, sizeof(cli))) {
        /* The command line (python/tether/_cli.py), through the wrapper CMake writes. */
        printf("The command line lists its clients, calls it, runs a console on it "
               "(docs/cli.md):\n");
        printf("    %s ls -H %s     %s call -H %s frame_stats     %s repl -H %s\n", cli,
               d->opts.name, cli, d->opts.name, cli, d->opts.name);
    }
    printf("Stop with Ctrl-C.\n\n");
    fflush(stdout);
    free(dir);
}

static void
usage(FILE *to)
{
    fprintf(to,
            "usage: tether-demo [--name NAME] [--tcp [PORT]] [--port PORT] [--seconds N]\n"
            "                   [--quiet]\n"
            "\n"
            "An engine-like host to script: a 60 fps frame loop and a scene of actors that\n"
            "scripts spawn, move, rename and delete, through services or through proxies.\n"
            "\n"
            "  --name NAME    the host's name (%s); clients find its socket by name\n"
            "  --tcp [PORT]   also listen on loopback TCP, port %d by default,\n"
            "                 0 for any free port\n"
            "  --port PORT    the TCP port (implies --tcp)\n"
            "  --seconds N    stop after N seconds (default: at SIGINT or SIGTERM)\n"
            "  --quiet        print events only (clients, scene changes, logged messages,\n"
            "                 errors, frame timing), not every call\n",
            DEFAULT_NAME, TETHER_DEFAULT_TCP_PORT);
}

/* Parse a whole decimal number in [min, max]. */
static bool
parse_number(const char *text, long min, long max, long *ret)
{
    char *end;
    errno = 0;
    long value = text && *text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || errno || *end || value < min || value > max) {
        return false;
    }
    *ret = value;
    return true;
}

/* A TCP port given on the command line: 0 asks for a free one, which tether_host_options
 * spells TETHER_PORT_EPHEMERAL (its 0 means the default port). */
static bool
parse_port(const char *text, demo_options *opts)
{
    long number;
    if (!parse_number(text, 0, 65535, &number)) {
        fprintf(stderr, "tether-demo: bad TCP port '%s'\n", text ? text : "");
        return false;
    }
    opts->tcp = true;
    opts->tcp_port = number == 0 ? TETHER_PORT_EPHEMERAL : (int)number;
    return true;
}

/* Returns 0, or 2 after printing a usage error. */
static int
parse_options(int argc, char **argv, demo_options *opts)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq = strchr(arg, '=');
        size_t key_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const char *value = eq ? eq + 1 : NULL;
        long number;
#define IS(option) (key_len == strlen(option) && strncmp(arg, option, key_len) == 0)
#define NEXT_VALUE() (value ? value : i + 1 < argc ? argv[++i] : NULL)
        if (IS("--help") || IS("-h")) {
            usage(stdout);
            exit(0);
        } else if (IS("--quiet") && !value) {
            opts->quiet = true;
        } else if (IS("--name")) {
            opts->name = NEXT_VALUE();
            if (!opts->name || !*opts->name) {
                fprintf(stderr, "tether-demo: --name needs a name\n");
                return 2;
            }
        } else if (IS("--seconds")) {
            value = NEXT_VALUE();
            if (!parse_number(value, 1, INT_MAX, &opts->seconds)) {
                fprintf(stderr, "tether-demo: --seconds needs a number of seconds\n");
                return 2;
            }
        } else if (IS("--port")) {
            if (!parse_port(NEXT_VALUE(), opts)) {
                return 2;
            }
        } else if (IS("--tcp")) {
            /* The port is optional: take the next argument only if it is a number. */
            if (!value && i + 1 < argc && parse_number(argv[i + 1], 0, 65535, &number)) {
                value = argv[++i];
            }
            opts->tcp = true;
            if (value && !parse_port(value, opts)) {
                return 2;
            }
        } else {
            fprintf(stderr, "tether-demo: unknown option '%s'\n", arg);
            usage(stderr);
            return 2;
        }
#undef NEXT_VALUE
#undef IS
    }
    return 0;
}

/* Empty the scene and stop serving, so that every actor is released before exit. */
static void
shut_down(demo *d)
{
    d->exiting = true;
    while (d->sub_count > 0) {
        subscriber_remove(d, &d->subs[d->sub_count - 1]);
    }
    free(d->subs);
    d->subs = NULL;
    d->sub_cap = 0;
    while (d->count > 0) {
        scene_remove(d, d->actors[d->count - 1]);
    }
    /* Stopping closes the clients, which drops their proxies' references; the releases
     * they cause are MAIN work, run by this last dispatch (or by the host's end). */
    tether_host_stop(d->host);
    tether_host_dispatch(d->host, TETHER_BUDGET_UNLIMITED);
    d->host = tether_host_unref(d->host);
    free(d->actors);
    d->actors = NULL;
}

int
main(int argc, char **argv)
{
    static demo d; /* static: zeroed, and large (the frame clock's ring) */
    d.opts = (demo_options){.name = DEFAULT_NAME, .tcp_port = TETHER_DEFAULT_TCP_PORT};
    int r = parse_options(argc, argv, &d.opts);
    if (r != 0) {
        return r;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Block the stop signals before the library starts its I/O thread, which inherits
     * the mask, so that they stay pending for the frame loop to see. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);

    tether_host_options host_opts = {
        .name = d.opts.name,
        .tcp = d.opts.tcp,
        .tcp_port = d.opts.tcp_port,
        /* tether ls, reset, disconnect, exec and eval: a demo trusts its clients. */
        .builtin_services = TETHER_BUILTIN_ALL,
        .on_client = on_client,
        .on_client_userdata = &d,
        .log = on_log,
        .log_level = TETHER_LOG_INFO,
    };
    r = tether_host_new(&host_opts, &d.host);
    r = r < 0 ? r : add_services(&d);
    r = r < 0 ? r : tether_host_start(d.host);
    if (r < 0) {
        fprintf(stderr, "tether-demo: cannot start the host '%s': %s\n", d.opts.name,
                tether_strerror(r));
        if (r == -EADDRINUSE) {
            fprintf(stderr, "tether-demo: another host uses that name or port: "
                            "choose another with --name or --port\n");
        }
        tether_host_unref(d.host);
        return 1;
    }

    print_how_to_connect(&d);
    int status = run_frames(&d, &signals, d.opts.seconds);
    say("served %llu calls in %llu frames; %llu actors spawned, %zu in the scene",
        (unsigned long long)atomic_load(&d.calls), (unsigned long long)d.clock.frames,
        (unsigned long long)d.spawned, d.count);
    shut_down(&d);
    return status;
}
