/*
 * Benchmark guest: spawn latency as a parent sees it. With the argument N it runs N
 * rounds of spawning a child of its own module (which exits 0 at once) and waiting
 * for it, and prints one line per round: "local NS" or "remote NS", by whether the
 * child's pid names the parent's host or another (a pid's top bits are the host that
 * started it), then the round trip of spawn + wait in nanoseconds. Used by
 * `crates/bench/src/bin/spawn_remote.rs`.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nimbus.h"

/* A pid's low bits are a per-host sequence; the bits above them name the host. */
#define PID_SEQUENCE_BITS 43

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) return 0;
    int rounds = argc > 1 ? atoi(argv[1]) : 1000;
    if (rounds <= 0) {
        fprintf(stderr, "spawn_bench: rounds must be a positive number\n");
        return 2;
    }
    const char *child_args[] = {"child"};
    int64_t home = nimbus_pid() >> PID_SEQUENCE_BITS;
    for (int i = 0; i < rounds; i++) {
        uint64_t start = now_ns();
        int64_t pid = nimbus_spawn("", 1, child_args);
        if (pid < 0) {
            fprintf(stderr, "spawn_bench: spawn failed (%" PRId64 ")\n", pid);
            return 1;
        }
        int32_t status = -1;
        int ret = nimbus_wait(pid, &status);
        if (ret != 0 || status != 0) {
            fprintf(stderr, "spawn_bench: wait failed (%d, status %d)\n", ret, (int)status);
            return 1;
        }
        uint64_t took = now_ns() - start;
        printf("%s %" PRIu64 "\n", (pid >> PID_SEQUENCE_BITS) == home ? "local" : "remote", took);
    }
    return 0;
}
