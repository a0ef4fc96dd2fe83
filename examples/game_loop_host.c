/*
 * game_loop_host: a host shaped like a game, as docs/embedding.md describes.
 *
 * The main thread runs a 60 fps frame loop and owns an in-memory "scene" (a list of
 * named entities) that only it touches, as an engine's API would be. Scripts reach the
 * scene through two MAIN services, spawn(name) and count(); their handlers run on the
 * main thread inside the tether_host_dispatch() call of each frame, which gets 500 us of
 * the 16.7 ms frame. When more work is queued than fits, dispatch returns 1 and the rest
 * stays queued, in order, for the next frames. Each second the loop prints what the
 * frames did.
 *
 * --bots N starts N script-like clients on threads of this process (they still talk to
 * the host through its socket, like any other client). Each spawns --spawns entities
 * through pipelined asynchronous calls, which makes the budget visible in the stats.
 * Once they are done, the main thread calls bot-1's census service synchronously, and
 * census (a POOL handler) calls count() on the host back: the call-back runs inside
 * the main thread's wait instead of deadlocking (docs/embedding.md, "The call-back
 * deadlock").
 *
 * Usage: game_loop_host [--name NAME] [--frames N] [--bots N] [--spawns N]
 * Runs until SIGINT or SIGTERM, or for N frames.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tether.h>

#define FRAME_USEC 16667ull         /* 60 frames per second */
#define DISPATCH_BUDGET_USEC 500ull /* of each frame, for scripts */
#define SPAWN_COST_USEC 20ull       /* stands for the engine work of creating an entity */
#define STATS_EVERY 60              /* frames: one line a second */

/* ---- the scene: main thread only, so no lock ------------------------------------------- */

typedef struct scene {
    char **names;
    size_t count, cap;
} scene;

static scene the_scene;

/* Frame counters since the last stats line, and in total. Main thread only. */
typedef struct frame_stats {
    uint64_t frames, calls, dispatch_usec, dispatch_max_usec, backlog_frames, late_frames;
} frame_stats;

static frame_stats period, total;
static uint64_t frame_number;

static volatile sig_atomic_t stop_requested;

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void
busy_wait_usec(uint64_t usec)
{
    uint64_t start = tether_now_usec();
    while (tether_now_usec() - start < usec) {
    }
}

/* spawn(name) -> the new entity's id. MAIN: runs on the main thread, inside dispatch. */
static int
spawn(tether_request *req, void *userdata)
{
    (void)userdata;
    const char *name = NULL;
    int r = tether_request_read(req, "s", &name);
    if (r < 0) {
        return r; /* the caller gets a TypeError naming the argument */
    }
    if (!name || !*name) {
        return tether_request_reply_error(req, "ValueError", "an entity needs a name");
    }
    if (the_scene.count == the_scene.cap) {
        size_t cap = the_scene.cap ? 2 * the_scene.cap : 64;
        char **names = realloc(the_scene.names, cap * sizeof(*names));
        if (!names) {
            return TETHER_ENOMEM;
        }
        the_scene.names = names;
        the_scene.cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        return TETHER_ENOMEM;
    }
    busy_wait_usec(SPAWN_COST_USEC);
    the_scene.names[the_scene.count++] = copy;
    period.calls++;
    return tether_request_reply(req, "u", (uint64_t)the_scene.count);
}

/* count() -> the number of entities. MAIN as well. */
static int
count(tether_request *req, void *userdata)
{
    (void)userdata;
    period.calls++;
    return tether_request_reply(req, "u", (uint64_t)the_scene.count);
}

/* Clients arriving and leaving: on the main thread too, inside dispatch. */
static void
on_client(void *userdata, tether_conn *conn, int event)
{
    (void)userdata;
    printf("frame %llu: client %s (pid %lld) %s\n", (unsigned long long)frame_number,
           tether_conn_get_peer_name(conn), (long long)tether_conn_get_peer_pid(conn),
           event == TETHER_CLIENT_CONNECTED ? "connected" : "left");
}

/* ---- bots: script-like clients on threads of this process ------------------------------ */

typedef struct bot {
    pthread_t thread;
    char name[32];
    const char *address;
    unsigned spawns;
    tether_client *client;
    int result; /* 0, or the first failure */
} bot;

static atomic_uint bots_done;
static atomic_bool bots_stop;

/*
 * census() -> the host's count(), asked back. POOL, not IO: it blocks in a synchronous
 * call, which an IO handler may not do (TETHER_EDEADLK). The call carries this request's
 * chain, so when the host's main thread is the one waiting on census, count() runs
 * inside that wait.
 */
static int
census(tether_request *req, void *userdata)
{
    bot *b = userdata;
    tether_value *n = NULL;
    tether_error error = TETHER_ERROR_INIT;
    int r = tether_conn_call(tether_client_get_conn(b->client), "count", NULL, &n, &error, NULL);
    if (r < 0) {
        r = tether_request_reply_error(req, "RuntimeError", "count: %s",
                                       error.message ? error.message : tether_strerror(r));
    } else {
        r = tether_request_reply_value(req, n);
    }
    tether_value_unref(n);
    tether_error_done(&error);
    return r;
}

static void *
bot_main(void *arg)
{
    bot *b = arg;
    tether_client_options options = {.name = b->name, .address = b->address};
    tether_future **futures = calloc(b->spawns ? b->spawns : 1, sizeof(*futures));
    int r = futures ? tether_client_new(&options, &b->client) : TETHER_ENOMEM;
    r = r < 0 ? r : tether_client_add_service(b->client, "census", TETHER_CONTEXT_POOL, census, b);
    r = r < 0 ? r : tether_client_connect(b->client, NULL);
    /* Pipelined: every spawn is sent before the first answer is awaited. */
    for (unsigned i = 0; r == 0 && i < b->spawns; i++) {
        char entity[64];
        snprintf(entity, sizeof(entity), "%s-crate-%u", b->name, i + 1);
        r = tether_conn_call_async(tether_client_get_conn(b->client), "spawn", NULL, &futures[i],
                                   "s", entity);
    }
    for (unsigned i = 0; futures && i < b->spawns && futures[i]; i++) {
        tether_future_wait(futures[i], TETHER_TIMEOUT_INFINITE);
        int status = tether_future_get_result(futures[i], NULL, NULL);
        r = r < 0 ? r : status;
        futures[i] = tether_future_unref(futures[i]);
    }
    free(futures);
    b->result = r;
    atomic_fetch_add(&bots_done, 1);
    /* Stay connected, serving census, until the host is done. */
    while (!atomic_load(&bots_stop)) {
        struct timespec nap = {0, 10 * 1000 * 1000};
        nanosleep(&nap, NULL);
    }
    b->client = tether_client_unref(b->client);
    return NULL;
}

/* Once all bots are done: main -> bot-1.census -> host.count (MAIN) -> back, nested. */
static int
run_census(tether_host *host, unsigned bot_count)
{
    tether_conn *conn = NULL;
    int r = tether_host_get_client(host, "bot-1", &conn);
    if (r < 0) {
        fprintf(stderr, "game_loop_host: bot-1: %s\n", tether_strerror(r));
        return r;
    }
    tether_call_options options = {.deadline_usec = tether_now_usec() + 2000000};
    tether_value *n = NULL;
    tether_error error = TETHER_ERROR_INIT;
    uint64_t start = tether_now_usec();
    r = tether_conn_call(conn, "census", &options, &n, &error, NULL);
    uint64_t took = tether_now_usec() - start;
    uint64_t entities = 0;
    r = r < 0 ? r : tether_value_read(n, &error, "u", &entities);
    if (r < 0) {
        fprintf(stderr, "game_loop_host: census: %s (%s)\n", tether_strerror(r),
                error.message ? error.message : "");
    } else {
        printf("frame %llu: census by bot-1: %llu entities (its count() ran inside our wait; "
               "%llu us)\n",
               (unsigned long long)frame_number, (unsigned long long)entities,
               (unsigned long long)took);
        printf("frame %llu: all %u bots done\n", (unsigned long long)frame_number, bot_count);
    }
    tether_value_unref(n);
    tether_error_done(&error);
    conn = tether_conn_unref(conn);
    return r;
}

/* ---- the frame loop -------------------------------------------------------------------- */

static void
print_stats(const char *what, const frame_stats *s)
{
    printf("%s %llu: %llu frames, %llu calls, dispatch avg %llu us max %llu us, "
           "%llu frames left work queued, %llu late, scene %zu\n",
           what, (unsigned long long)frame_number, (unsigned long long)s->frames,
           (unsigned long long)s->calls,
           (unsigned long long)(s->frames ? s->dispatch_usec / s->frames : 0),
           (unsigned long long)s->dispatch_max_usec, (unsigned long long)s->backlog_frames,
           (unsigned long long)s->late_frames, the_scene.count);
    fflush(stdout);
}

static void
add_stats(frame_stats *into, const frame_stats *s)
{
    into->frames += s->frames;
    into->calls += s->calls;
    into->dispatch_usec += s->dispatch_usec;
    if (s->dispatch_max_usec > into->dispatch_max_usec) {
        into->dispatch_max_usec = s->dispatch_max_usec;
    }
    into->backlog_frames += s->backlog_frames;
    into->late_frames += s->late_frames;
}

static void
sleep_until(uint64_t when_usec)
{
    struct timespec ts = {.tv_sec = (time_t)(when_usec / 1000000),
                          .tv_nsec = (long)(when_usec % 1000000) * 1000};
    /* A signal interrupts the sleep (EINTR); the loop then sees stop_requested. */
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static int
run_frames(tether_host *host, uint64_t max_frames, unsigned bot_count)
{
    bool census_done = bot_count == 0;
    uint64_t next_frame = tether_now_usec();
    while (!stop_requested && (max_frames == 0 || frame_number < max_frames)) {
        frame_number++;
        /* An engine would simulate and render here. */

        uint64_t start = tether_now_usec();
        int r = tether_host_dispatch(host, DISPATCH_BUDGET_USEC);
        uint64_t spent = tether_now_usec() - start;
        if (r < 0) {
            fprintf(stderr, "game_loop_host: dispatch: %s\n", tether_strerror(r));
            return r;
        }
        period.frames++;
        period.dispatch_usec += spent;
        if (spent > period.dispatch_max_usec) {
            period.dispatch_max_usec = spent;
        }
        period.backlog_frames += r == 1; /* the rest waits, in order, for the next frame */

        if (!census_done && atomic_load(&bots_done) == bot_count) {
            census_done = true;
            if (run_census(host, bot_count) < 0) {
                return -1;
            }
        }
        if (frame_number % STATS_EVERY == 0) {
            print_stats("frame", &period);
            add_stats(&total, &period);
            period = (frame_stats){0};
        }

        next_frame += FRAME_USEC;
        uint64_t now = tether_now_usec();
        if (now > next_frame) {
            period.late_frames++;
            next_frame = now; /* do not try to catch up with a burst of frames */
        }
        sleep_until(next_frame);
    }
    add_stats(&total, &period);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------ */

static int
usage(FILE *to)
{
    fprintf(to, "usage: game_loop_host [--name NAME] [--frames N] [--bots N] [--spawns N]\n"
                "  --name NAME  the host's name (game); its socket is NAME.sock in the\n"
                "               runtime directory\n"
                "  --frames N   stop after N frames (default: at SIGINT or SIGTERM)\n"
                "  --bots N     start N script-like clients in this process (default 0)\n"
                "  --spawns N   entities each bot spawns (default 50)\n");
    return to == stdout ? 0 : 2;
}

static bool
parse_count(const char *text, unsigned long long max, unsigned long long *ret)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text ? strtoull(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || v > max || text[0] == '-') {
        return false;
    }
    *ret = v;
    return true;
}

int
main(int argc, char **argv)
{
    const char *name = "game";
    unsigned long long max_frames = 0, bot_count = 0, spawns = 50;
    for (int i = 1; i < argc; i++) {
        const char *option = argv[i];
        const char *value = i + 1 < argc ? argv[++i] : NULL;
        bool ok = value != NULL;
        if (strcmp(option, "--help") == 0 || strcmp(option, "-h") == 0) {
            return usage(stdout);
        } else if (strcmp(option, "--name") == 0) {
            name = value;
        } else if (strcmp(option, "--frames") == 0) {
            ok = parse_count(value, UINT32_MAX, &max_frames);
        } else if (strcmp(option, "--bots") == 0) {
            ok = parse_count(value, 64, &bot_count);
        } else if (strcmp(option, "--spawns") == 0) {
            ok = parse_count(value, 1000, &spawns);
        } else {
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "game_loop_host: bad option '%s'\n", option);
            return usage(stderr);
        }
    }

    /* Keep SIGINT and SIGTERM away from the library's I/O thread (created with the mask
     * of the thread that makes the first host) and the bots; only the main thread,
     * which unblocks them below, runs the handler. */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    tether_host_options options = {.name = name, .on_client = on_client};
    tether_host *host = NULL;
    int r = tether_host_new(&options, &host); /* this thread becomes the main thread */
    r = r < 0 ? r : tether_host_add_service(host, "spawn", TETHER_CONTEXT_MAIN, spawn, NULL);
    r = r < 0 ? r : tether_host_add_service(host, "count", TETHER_CONTEXT_MAIN, count, NULL);
    r = r < 0 ? r : tether_host_start(host);
    if (r < 0) {
        fprintf(stderr, "game_loop_host: %s\n", tether_strerror(r));
        tether_host_unref(host);
        return 1;
    }
    printf("serving on %s: spawn(name) and count(), %llu us of each %llu us frame\n",
           tether_host_get_address(host), DISPATCH_BUDGET_USEC, FRAME_USEC);
    fflush(stdout);

    bot bots[64];
    unsigned started = 0;
    for (; started < bot_count; started++) {
        bot *b = &bots[started];
        *b = (bot){.address = tether_host_get_address(host), .spawns = (unsigned)spawns};
        snprintf(b->name, sizeof(b->name), "bot-%u", started + 1);
        if (pthread_create(&b->thread, NULL, bot_main, b) != 0) {
            fprintf(stderr, "game_loop_host: cannot start %s\n", b->name);
            break;
        }
    }
    pthread_sigmask(SIG_UNBLOCK, &signals, NULL);

    r = started == bot_count ? run_frames(host, max_frames, started) : -1;
    print_stats("done after frame", &total);

    /* Stopping the host first fails whatever the bots still wait for, so they finish. */
    bool bots_finished = atomic_load(&bots_done) == started;
    tether_host_stop(host);
    atomic_store(&bots_stop, true);
    for (unsigned i = 0; i < started; i++) {
        pthread_join(bots[i].thread, NULL);
        if (bots_finished && bots[i].result < 0) {
            fprintf(stderr, "game_loop_host: %s: %s\n", bots[i].name,
                    tether_strerror(bots[i].result));
            r = -1;
        }
    }
    if (!bots_finished) {
        printf("the loop ended before the bots were done\n");
    }
    host = tether_host_unref(host);
    for (size_t i = 0; i < the_scene.count; i++) {
        free(the_scene.names[i]);
    }
    free(the_scene.names);
    return r < 0;
}
