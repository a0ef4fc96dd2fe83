/*
 * game_loop_host.cpp: examples/game_loop_host.c written with the C++ API of
 * include/tether.hpp (docs/cpp-guide.md). Same behaviour, options and output, so that
 * tests/test-embedding-example.sh checks both.
 *
 * The main thread runs a 60 fps frame loop and owns an in-memory scene (a list of named
 * entities) that only it touches. Scripts reach it through two MAIN services,
 * spawn(name) and count(), here lambdas with typed parameters; they run inside the
 * host.dispatch() of each frame, which gets 500 us of the 16.7 ms frame.
 *
 * --bots N starts N script-like clients on threads of this process. Each spawns --spawns
 * entities through pipelined asynchronous calls. Once they are done, the main thread
 * calls bot-1's census service synchronously, and census (a POOL handler) calls count()
 * on the host back: the call-back runs inside the main thread's wait instead of
 * deadlocking (docs/embedding.md, "The call-back deadlock").
 *
 * Usage: game_loop_host [--name NAME] [--frames N] [--bots N] [--spawns N]
 * Runs until SIGINT or SIGTERM, or for N frames.
 */
#include <tether.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <pthread.h>
#include <string>
#include <thread>
#include <time.h>
#include <vector>

namespace {

constexpr std::uint64_t frame_usec = 16667;         /* 60 frames per second */
constexpr std::uint64_t dispatch_budget_usec = 500; /* of each frame, for scripts */
constexpr std::uint64_t spawn_cost_usec = 20;       /* stands for the engine work of an entity */
constexpr std::uint64_t stats_every = 60;           /* frames: one line a second */

/* Frame counters since the last stats line, and in total. Main thread only. */
struct frame_stats {
    std::uint64_t frames = 0, calls = 0, dispatch_usec = 0, dispatch_max_usec = 0,
                  backlog_frames = 0, late_frames = 0;

    void
    add(const frame_stats &s)
    {
        frames += s.frames;
        calls += s.calls;
        dispatch_usec += s.dispatch_usec;
        dispatch_max_usec = std::max(dispatch_max_usec, s.dispatch_max_usec);
        backlog_frames += s.backlog_frames;
        late_frames += s.late_frames;
    }
};

/* The scene and the loop's counters: main thread only, so no lock. */
struct game {
    std::vector<std::string> scene;
    frame_stats period, total;
    std::uint64_t frame_number = 0;
};

volatile std::sig_atomic_t stop_requested;

void
on_signal(int)
{
    stop_requested = 1;
}

void
busy_wait_usec(std::uint64_t usec)
{
    std::uint64_t start = tether_now_usec();
    while (tether_now_usec() - start < usec) {
    }
}

/* Clients arriving and leaving: on the main thread, inside dispatch. */
void
on_client(void *userdata, tether_conn *conn, int event)
{
    auto *g = static_cast<game *>(userdata);
    std::printf("frame %llu: client %s (pid %lld) %s\n",
                static_cast<unsigned long long>(g->frame_number), tether_conn_get_peer_name(conn),
                static_cast<long long>(tether_conn_get_peer_pid(conn)),
                event == TETHER_CLIENT_CONNECTED ? "connected" : "left");
}

/* ---- bots: script-like clients on threads of this process ------------------------------ */

std::atomic<unsigned> bots_done{0};
std::atomic<bool> bots_stop{false};

struct bot {
    std::string name;
    std::string address;
    unsigned spawns = 0;
    tether::error_info failure; /* code 0, or the first failure */
    std::thread thread;

    void
    run()
    {
        tether_client_options options{};
        options.name = name.c_str();
        options.address = address.c_str();
        auto made = tether::client::try_make(options);
        if (!made.ok()) {
            finish(made.error());
            return;
        }
        tether::client client = std::move(made).value();
        /* census() -> the host's count(), asked back. POOL, not IO: it blocks in a
         * synchronous call. The call carries this request's chain, so when the host's
         * main thread is the one waiting on census, count() runs inside that wait. */
        auto census = [](tether::request &req) { return req.conn().call<std::uint64_t>("count"); };
        auto added = client.try_add_service("census", tether::context::pool, census);
        auto connected = added.ok() ? client.try_connect() : added;
        if (!connected.ok()) {
            finish(connected.error());
            return;
        }
        /* Pipelined: every spawn is sent before the first answer is awaited. */
        tether::conn host = client.conn();
        std::vector<tether::future<std::uint64_t>> futures;
        for (unsigned i = 0; i < spawns; i++) {
            auto f = host.try_call_async<std::uint64_t>("spawn",
                                                        name + "-crate-" + std::to_string(i + 1));
            if (!f.ok()) {
                failure = f.error();
                break;
            }
            futures.push_back(std::move(f).value());
        }
        for (auto &f : futures) {
            auto outcome = f.try_get();
            if (!outcome.ok() && failure.code == 0) {
                failure = outcome.error();
            }
        }
        finish(failure);
        /* Stay connected, serving census, until the host is done. */
        while (!bots_stop) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    void
    finish(const tether::error_info &outcome)
    {
        failure = outcome;
        bots_done++;
    }
};

/* Once all bots are done: main -> bot-1.census -> host.count (MAIN) -> back, nested. */
bool
run_census(game &g, tether::host &host, unsigned bot_count)
{
    auto conn = host.try_client("bot-1");
    if (!conn.ok()) {
        std::fprintf(stderr, "game_loop_host: bot-1: %s\n", tether_strerror(conn.code()));
        return false;
    }
    tether::call_options options;
    options.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    std::uint64_t start = tether_now_usec();
    auto entities = conn.value().try_call<std::uint64_t>(options, "census");
    std::uint64_t took = tether_now_usec() - start;
    if (!entities.ok()) {
        std::fprintf(stderr, "game_loop_host: census: %s (%s)\n", tether_strerror(entities.code()),
                     entities.error().message.c_str());
        return false;
    }
    std::printf("frame %llu: census by bot-1: %llu entities (its count() ran inside our wait; "
                "%llu us)\n",
                static_cast<unsigned long long>(g.frame_number),
                static_cast<unsigned long long>(entities.value()),
                static_cast<unsigned long long>(took));
    std::printf("frame %llu: all %u bots done\n", static_cast<unsigned long long>(g.frame_number),
                bot_count);
    return true;
}

/* ---- the frame loop -------------------------------------------------------------------- */

void
print_stats(const game &g, const char *what, const frame_stats &s)
{
    std::printf("%s %llu: %llu frames, %llu calls, dispatch avg %llu us max %llu us, "
                "%llu frames left work queued, %llu late, scene %zu\n",
                what, static_cast<unsigned long long>(g.frame_number),
                static_cast<unsigned long long>(s.frames), static_cast<unsigned long long>(s.calls),
                static_cast<unsigned long long>(s.frames ? s.dispatch_usec / s.frames : 0),
                static_cast<unsigned long long>(s.dispatch_max_usec),
                static_cast<unsigned long long>(s.backlog_frames),
                static_cast<unsigned long long>(s.late_frames), g.scene.size());
    std::fflush(stdout);
}

void
sleep_until(std::uint64_t when_usec)
{
    timespec ts{};
    ts.tv_sec = static_cast<time_t>(when_usec / 1000000);
    ts.tv_nsec = static_cast<long>(when_usec % 1000000) * 1000;
    /* A signal interrupts the sleep (EINTR); the loop then sees stop_requested. */
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
}

bool
run_frames(game &g, tether::host &host, std::uint64_t max_frames, unsigned bot_count)
{
    bool census_done = bot_count == 0;
    std::uint64_t next_frame = tether_now_usec();
    while (!stop_requested && (max_frames == 0 || g.frame_number < max_frames)) {
        g.frame_number++;
        /* An engine would simulate and render here. */

        std::uint64_t start = tether_now_usec();
        auto more = host.try_dispatch(std::chrono::microseconds(dispatch_budget_usec));
        std::uint64_t spent = tether_now_usec() - start;
        if (!more.ok()) {
            std::fprintf(stderr, "game_loop_host: dispatch: %s\n", tether_strerror(more.code()));
            return false;
        }
        g.period.frames++;
        g.period.dispatch_usec += spent;
        g.period.dispatch_max_usec = std::max(g.period.dispatch_max_usec, spent);
        g.period.backlog_frames += more.value(); /* the rest waits for the next frame */

        if (!census_done && bots_done == bot_count) {
            census_done = true;
            if (!run_census(g, host, bot_count)) {
                return false;
            }
        }
        if (g.frame_number % stats_every == 0) {
            print_stats(g, "frame", g.period);
            g.total.add(g.period);
            g.period = frame_stats{};
        }

        next_frame += frame_usec;
        std::uint64_t now = tether_now_usec();
        if (now > next_frame) {
            g.period.late_frames++;
            next_frame = now; /* do not try to catch up with a burst of frames */
        }
        sleep_until(next_frame);
    }
    g.total.add(g.period);
    return true;
}

/* ---- main ------------------------------------------------------------------------------ */

int
usage(std::FILE *to)
{
    std::fprintf(to, "usage: game_loop_host [--name NAME] [--frames N] [--bots N] [--spawns N]\n"
                     "  --name NAME  the host's name (game); its socket is NAME.sock in the\n"
                     "               runtime directory\n"
                     "  --frames N   stop after N frames (default: at SIGINT or SIGTERM)\n"
                     "  --bots N     start N script-like clients in this process (default 0)\n"
                     "  --spawns N   entities each bot spawns (default 50)\n");
    return to == stdout ? 0 : 2;
}

bool
parse_count(const char *text, unsigned long long max, unsigned long long &ret)
{
    char *end = nullptr;
    errno = 0;
    unsigned long long v = text ? std::strtoull(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || v > max || text[0] == '-') {
        return false;
    }
    ret = v;
    return true;
}

} // namespace

int
main(int argc, char **argv)
{
    const char *name = "game";
    unsigned long long max_frames = 0, bot_count = 0, spawns = 50;
    for (int i = 1; i < argc; i++) {
        std::string option = argv[i];
        const char *value = i + 1 < argc ? argv[++i] : nullptr;
        bool ok = value != nullptr;
        if (option == "--help" || option == "-h") {
            return usage(stdout);
        } else if (option == "--name") {
            name = value;
        } else if (option == "--frames") {
            ok = parse_count(value, UINT32_MAX, max_frames);
        } else if (option == "--bots") {
            ok = parse_count(value, 64, bot_count);
        } else if (option == "--spawns") {
            ok = parse_count(value, 1000, spawns);
        } else {
            ok = false;
        }
        if (!ok) {
            std::fprintf(stderr, "game_loop_host: bad option '%s'\n", option.c_str());
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
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    game g;
    tether_host_options options{};
    options.name = name;
    options.on_client = on_client;
    options.on_client_userdata = &g;
    auto made = tether::host::try_make(options); /* this thread becomes the main thread */
    if (!made.ok()) {
        std::fprintf(stderr, "game_loop_host: %s\n", tether_strerror(made.code()));
        return 1;
    }
    tether::host host = std::move(made).value();

    /* spawn(name) -> the new entity's id: MAIN, on this thread inside dispatch. A caller
     * passing anything but a string gets a TypeError naming the argument. */
    auto spawn = [&g](std::string entity) -> tether::result<std::uint64_t> {
        if (entity.empty()) {
            return tether::error_info{TETHER_EREMOTE, "ValueError", "an entity needs a name", {}};
        }
        busy_wait_usec(spawn_cost_usec);
        g.scene.push_back(std::move(entity));
        g.period.calls++;
        return g.scene.size();
    };
    /* count() -> the number of entities. MAIN as well. */
    auto count = [&g]() -> std::uint64_t {
        g.period.calls++;
        return g.scene.size();
    };
    auto r = host.try_add_service("spawn", tether::context::main, spawn);
    r = r.ok() ? host.try_add_service("count", tether::context::main, count) : r;
    r = r.ok() ? host.try_start() : r;
    if (!r.ok()) {
        std::fprintf(stderr, "game_loop_host: %s\n", tether_strerror(r.code()));
        return 1;
    }
    std::printf("serving on %s: spawn(name) and count(), %llu us of each %llu us frame\n",
                host.address().c_str(), static_cast<unsigned long long>(dispatch_budget_usec),
                static_cast<unsigned long long>(frame_usec));
    std::fflush(stdout);

    std::vector<std::unique_ptr<bot>> bots;
    for (unsigned i = 0; i < bot_count; i++) {
        auto b = std::make_unique<bot>();
        b->name = "bot-" + std::to_string(i + 1);
        b->address = host.address();
        b->spawns = static_cast<unsigned>(spawns);
        bot *raw = b.get();
        b->thread = std::thread([raw] { raw->run(); });
        bots.push_back(std::move(b));
    }
    pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);

    bool ok = run_frames(g, host, max_frames, static_cast<unsigned>(bots.size()));
    print_stats(g, "done after frame", g.total);

    /* Stopping the host first fails whatever the bots still wait for, so they finish. */
    bool bots_finished = bots_done == bots.size();
    (void)host.try_stop();
    bots_stop = true;
    for (auto &b : bots) {
        b->thread.join();
        if (bots_finished && b->failure.code < 0) {
            std::fprintf(stderr, "game_loop_host: %s: %s\n", b->name.c_str(),
                         b->failure.message.c_str());
            ok = false;
        }
    }
    if (!bots_finished) {
        std::printf("the loop ended before the bots were done\n");
    }
    return ok ? 0 : 1;
}
