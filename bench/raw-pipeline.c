/*
 * raw-pipeline: the physical baseline of pipelined asynchronous calls. Two processes
 * (the server is forked) over a Unix stream socket. The client keeps --window requests
 * of --req-size bytes outstanding: it writes a first window in one batch, then, each time
 * its read returns replies, writes as many new requests in one batch as replies came in.
 * The server reads whatever is available and writes one --resp-size reply per complete
 * request, also in one batch, with blocking I/O. The client reads blocking but sends
 * without blocking (waiting for room only when no reply is due): a Unix socket charges
 * each small write several hundred bytes of buffer, so a window of separate small writes
 * can fill both directions, and two blocking writers would then wait for each other.
 *
 * The first --warmup-ms are not counted; then frames are counted for --ms milliseconds.
 * Output: one JSON line, {"bench": "raw-pipeline", ..., "calls_per_sec": N}.
 */
#define _POSIX_C_SOURCE 200809L

#include "common.h"
#include <poll.h>

#define IOBUF_SIZE (256 * 1024)

static void
serve(int lfd, long req_size, long resp_size)
{
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) {
        _exit(1);
    }
    char *in = malloc(IOBUF_SIZE);
    char *out = calloc(1, IOBUF_SIZE);
    if (!in || !out) {
        _exit(1);
    }
    uint64_t bytes_in = 0, answered = 0;
    for (;;) {
        ssize_t n = read(fd, in, IOBUF_SIZE);
        if (n == 0) {
            _exit(0);
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            _exit(1);
        }
        bytes_in += (uint64_t)n;
        uint64_t complete = bytes_in / (uint64_t)req_size;
        uint64_t owed = (complete - answered) * (uint64_t)resp_size;
        answered = complete;
        while (owed > 0) {
            size_t chunk = owed > IOBUF_SIZE ? IOBUF_SIZE : (size_t)owed;
            if (bench_write_full(fd, out, chunk) < 0) {
                _exit(1);
            }
            owed -= chunk;
        }
    }
}

int
main(int argc, char **argv)
{
    long req_size = 23, resp_size = 13, window = 256, ms = 2000, warmup_ms = 300;
    const bench_option options[] = {
        {"--req-size", &req_size, "bytes of a request"},
        {"--resp-size", &resp_size, "bytes of a reply"},
        {"--window", &window, "requests outstanding"},
        {"--ms", &ms, "measured milliseconds"},
        {"--warmup-ms", &warmup_ms, "milliseconds not counted first"},
    };
    bench_parse_options(argc, argv, options, BENCH_COUNT(options));
    if (req_size < 1 || resp_size < 1 || window < 1 || ms < 1 ||
        window * req_size > IOBUF_SIZE / 2 || window * resp_size > IOBUF_SIZE / 2) {
        fprintf(stderr, "bad sizes: window * size must stay under %d bytes\n", IOBUF_SIZE / 2);
        return 2;
    }
    bench_ignore_sigpipe();

    char dir[128], path[160];
    bench_tmpdir(dir, sizeof(dir), path, sizeof(path), "raw.sock");
    pid_t pid;
    int fd = bench_fork_server(path, serve, req_size, resp_size, &pid);
    char *out = bench_calloc(1, IOBUF_SIZE);
    char *in = bench_calloc(1, IOBUF_SIZE);

    bench_window w = bench_window_start(warmup_ms, ms);
    uint64_t bytes_in = 0, done = 0;
    uint64_t wanted = (uint64_t)window, bytes_out = 0, batches = 0;
    int stopping = 0;
    while (done < wanted) {
        /* Send what is due without blocking; wait for room only when no reply is due. */
        uint64_t due = wanted * (uint64_t)req_size;
        while (bytes_out < due) {
            uint64_t left = due - bytes_out;
            size_t chunk = left > IOBUF_SIZE ? IOBUF_SIZE : (size_t)left;
            ssize_t n = send(fd, out, chunk, MSG_DONTWAIT);
            if (n > 0) {
                bytes_out += (uint64_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (bytes_out / (uint64_t)req_size > done) {
                    break;
                }
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, -1);
                continue;
            }
            bench_die("send", errno);
        }
        batches++;

        ssize_t n = read(fd, in, IOBUF_SIZE);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) {
                continue;
            }
            bench_die("read", n == 0 ? ECONNRESET : errno);
        }
        bytes_in += (uint64_t)n;
        uint64_t now_done = bytes_in / (uint64_t)resp_size;
        uint64_t fresh = now_done - done;
        done = now_done;
        if (bench_window_note(&w, done)) {
            stopping = 1;
        }
        if (!stopping) {
            wanted += fresh;
        }
    }
    double elapsed = bench_window_seconds(&w);
    uint64_t counted = bench_window_counted(&w, done);

    close(fd);
    waitpid(pid, NULL, 0);
    bench_tmpdir_remove(dir, path);

    printf("{\"bench\": \"raw-pipeline\", \"req_size\": %ld, \"resp_size\": %ld, "
           "\"window\": %ld, \"calls\": %llu, \"seconds\": %.3f, \"batches\": %llu, "
           "\"calls_per_sec\": %.0f}\n",
           req_size, resp_size, window, (unsigned long long)counted, elapsed,
           (unsigned long long)batches, elapsed > 0 ? (double)counted / elapsed : 0.0);
    free(out);
    free(in);
    return 0;
}
