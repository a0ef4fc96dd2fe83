/* minimal_host.cpp: examples/minimal_host.c with the C++ API (include/tether.hpp), a host
 * with one service. Runs argv[1] seconds. */
#include <tether.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

int
main(int argc, char **argv)
{
    try {
        tether::host host;
        host.add_service("ping", tether::context::io, [] { return std::string("pong"); });
        host.start();
        std::printf("serving on %s\n", host.address().c_str());
        std::fflush(stdout);
        /* your application's main loop */
        std::this_thread::sleep_for(std::chrono::seconds(argc > 1 ? std::atoi(argv[1]) : 60));
    } catch (const tether::error &e) {
        std::fprintf(stderr, "minimal_host: %s\n", e.what());
        return 1;
    }
    return 0;
}
