/*
 * fuzz-target: what every fuzz/fuzz-*.c shares. A target is one libFuzzer entry point;
 * without TETHER_FUZZ the same file is linked with a replay driver and run over its
 * corpus by ctest (CMakeLists.txt). A broken expectation traps, so that libFuzzer, the
 * replay and the sanitizers all see it as a crash with the line it came from.
 */
#ifndef TETHER_FUZZ_TARGET_H
#define TETHER_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            __builtin_trap();                                                                      \
        }                                                                                          \
    } while (0)

#endif
