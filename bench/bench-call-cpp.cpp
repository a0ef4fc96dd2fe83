/*
 * bench-call-cpp: a synchronous no-op call through the C++ API (include/tether.hpp,
 * conn.call<void>("noop")) against the same call through the C API
 * (tether_conn_call(conn, "noop", ...)), on one connection, in the same run.
 *
 * The host runs in a forked process (forked before any tether object exists): the
 * no-op IO service of bench-call, served on a socket in a private temporary directory.
 * The parent connects one client and makes --warmup calls each way, then --rounds
 * rounds of --calls calls, C then C++ then C++ then C in turn (so that drift of the
 * machine hits both alike), timing each block. What it reports is the median over the
 * blocks of the mean time per call, each way, and their ratio (C++ over C; issue #15's
 * target is within 5%, a ratio of at most 1.05), with the calling process's CPU time and context
 * switches per call in each block (getrusage), medians too.
 *
 * --only c or --only cpp makes the warm-up and one block of --calls calls that way only:
 * bench/instructions counts the instructions per call of each under callgrind.
 *
 * Output: one JSON line, {"bench": "bench-call-cpp", "c_usec": ..., "cpp_usec": ...,
 * "ratio": ..., "c_cpu_usec": ..., "cpp_cpu_usec": ..., "c_switches": ...,
 * "cpp_switches": ...}.
 */
#include <tether.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

int
noop(tether_request *, void *)
{
    return 0;
}

[[noreturn]] void
run_host(const std::string &dir, const std::string &path, int ready_fd, int stop_fd)
{
    {
        tether_host_options options{};
        options.name = "bench";
        options.runtime_dir = dir.c_str();
        options.unix_path = path.c_str();
        tether::host host(options);
        tether_host_add_service(host.get(), "noop", TETHER_CONTEXT_IO, noop, nullptr);
        host.start();
        char ok = 1;
        if (write(ready_fd, &ok, 1) != 1) {
            _exit(1);
        }
        char byte;
        while (read(stop_fd, &byte, 1) > 0) {
        }
    }
    _exit(0);
}

double
median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

const char *
option_text(int argc, char **argv, const char *name, const char *fallback)
{
    for (int i = 1; i + 1 < argc; i++) {
        if (std::string(argv[i]) == name) {
            return argv[i + 1];
        }
    }
    return fallback;
}

long
option(int argc, char **argv, const char *name, long fallback)
{
    const char *text = option_text(argc, argv, name, nullptr);
    return text ? std::strtol(text, nullptr, 10) : fallback;
}

/* The process's CPU time, all its threads (user + system, microseconds) and context switches
 * (voluntary and involuntary) so far. */
struct usage {
    double cpu_usec;
    double switches;
};

usage
usage_now()
{
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return {static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec),
            static_cast<double>(ru.ru_nvcsw + ru.ru_nivcsw)};
}

/* Per-call figures of the blocks made one way. */
struct figures {
    std::vector<double> usec, cpu_usec, switches;
};

} // namespace

int
main(int argc, char **argv)
{
    long warmup = option(argc, argv, "--warmup", 10000);
    long calls = option(argc, argv, "--calls", 5000);
    long rounds = option(argc, argv, "--rounds", 20);
    std::string only = option_text(argc, argv, "--only", "");
    if (calls < 1 || rounds < 1 || warmup < 0 || (only != "" && only != "c" && only != "cpp")) {
        std::fprintf(stderr, "usage: bench-call-cpp [--warmup N] [--calls N] [--rounds N] "
                             "[--only c|cpp]\n");
        return 2;
    }

    /* bench/run gives each run a TMPDIR of its own. */
    const char *tmp = std::getenv("TMPDIR");
    std::string dir_template = std::string(tmp && *tmp ? tmp : "/tmp") + "/tether-bench-cpp-XXXXXX";
    if (!mkdtemp(dir_template.data())) {
        std::perror("mkdtemp");
        return 1;
    }
    std::string dir = dir_template.c_str(), path = dir + "/bench.sock";
    int ready[2], stop[2];
    if (pipe(ready) < 0 || pipe(stop) < 0) {
        std::perror("pipe");
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(ready[0]);
        close(stop[1]);
        run_host(dir, path, ready[1], stop[0]);
    }
    close(ready[1]);
    close(stop[0]);
    char ok = 0;
    if (read(ready[0], &ok, 1) != 1) {
        std::fprintf(stderr, "bench-call-cpp: the host did not start\n");
        return 1;
    }

    figures c_figures, cpp_figures;
    {
        tether_client_options options{};
        options.name = "bench-call-cpp";
        std::string address = "unix:" + path;
        options.address = address.c_str();
        options.runtime_dir = dir.c_str();
        tether::client client(options);
        client.connect();
        tether::conn conn = client.conn();

        auto c_block = [&](long n) {
            tether_error err = TETHER_ERROR_INIT;
            for (long i = 0; i < n; i++) {
                int r = tether_conn_call(conn.get(), "noop", nullptr, nullptr, &err, nullptr);
                if (r < 0) {
                    std::fprintf(stderr, "bench-call-cpp: C call: %s\n", tether_strerror(r));
                    std::exit(1);
                }
            }
        };
        auto cpp_block = [&](long n) {
            for (long i = 0; i < n; i++) {
                conn.call<void>("noop");
            }
        };
        auto timed = [&](auto block, figures &into) {
            usage before = usage_now();
            auto start = std::chrono::steady_clock::now();
            block(calls);
            std::chrono::duration<double, std::micro> took =
                std::chrono::steady_clock::now() - start;
            usage after = usage_now();
            double n = static_cast<double>(calls);
            into.usec.push_back(took.count() / n);
            into.cpu_usec.push_back((after.cpu_usec - before.cpu_usec) / n);
            into.switches.push_back((after.switches - before.switches) / n);
        };
        if (only == "c") {
            c_block(warmup);
            c_block(calls);
        } else if (only == "cpp") {
            cpp_block(warmup);
            cpp_block(calls);
        } else {
            c_block(warmup);
            cpp_block(warmup);
            for (long round = 0; round < rounds; round++) {
                if (round % 2 == 0) {
                    timed(c_block, c_figures);
                    timed(cpp_block, cpp_figures);
                } else {
                    timed(cpp_block, cpp_figures);
                    timed(c_block, c_figures);
                }
            }
        }
    }
    close(stop[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    unlink(path.c_str());
    rmdir(dir.c_str());

    if (only != "") {
        return 0;
    }
    double c = median(c_figures.usec), cpp = median(cpp_figures.usec);
    std::printf("{\"bench\": \"bench-call-cpp\", \"calls_per_block\": %ld, \"blocks\": %ld, "
                "\"c_usec\": %.3f, \"cpp_usec\": %.3f, \"ratio\": %.4f, "
                "\"c_cpu_usec\": %.3f, \"cpp_cpu_usec\": %.3f, "
                "\"c_switches\": %.3f, \"cpp_switches\": %.3f}\n",
                calls, rounds, c, cpp, cpp / c, median(c_figures.cpu_usec),
                median(cpp_figures.cpu_usec), median(c_figures.switches),
                median(cpp_figures.switches));
    return 0;
}
