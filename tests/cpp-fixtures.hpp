/*
 * cpp-fixtures: what the C++ test programs (tests/test-cpp*.cpp) share. They are plain
 * programs, built with and without exceptions, so nothing here throws: it uses the
 * try_ forms only.
 */
#ifndef TETHER_TEST_CPP_FIXTURES_HPP
#define TETHER_TEST_CPP_FIXTURES_HPP

#include "tether.hpp"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

/* A failed check ends the program: its exit status fails the test. */
#define CHECK_OR_EXIT(cond)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);          \
            std::exit(1);                                                                          \
        }                                                                                          \
    } while (0)

/* A runtime directory of the program's own when run outside ctest (which gives each
 * test one), removed at the end. */
class test_runtime_dir {
  public:
    test_runtime_dir()
    {
        if (!std::getenv("TETHER_RUNTIME_DIR")) {
            CHECK_OR_EXIT(mkdtemp(dir_) != nullptr);
            setenv("TETHER_RUNTIME_DIR", dir_, 1);
            made_ = true;
        }
    }
    ~test_runtime_dir()
    {
        if (made_) {
            rmdir(dir_);
        }
    }
    test_runtime_dir(const test_runtime_dir &) = delete;
    test_runtime_dir &operator=(const test_runtime_dir &) = delete;

  private:
    char dir_[32] = "/tmp/tether-cpp-XXXXXX";
    bool made_ = false;
};

/* A client named name, connected to h. */
inline tether::result<tether::client>
test_connect_client(const tether::host &h, const char *name)
{
    tether_client_options options{};
    options.name = name;
    std::string address = h.address();
    options.address = address.c_str();
    auto made = tether::client::try_make(options);
    if (made.ok()) {
        auto connected = made.value().try_connect();
        if (!connected.ok()) {
            return connected.error();
        }
    }
    return made;
}

#endif
