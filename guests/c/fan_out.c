/*
 * Test fixture for a cluster losing a worker. `fan_out N FILE` spawns N children of
 * its own module that each wait for one message, prints "spawned N", then waits
 * until FILE exists (the test creates it once it has arranged the loss of a host).
 * It then sends every child a message and waits for it, printing one line per
 * child: "child I: exited CODE", or "child I: lost (send E, wait E, status S)" when
 * the child's host is gone. Exits 0 when every child was accounted for.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "nimbus.h"

#define MAX_CHILDREN 64

static int child(void) {
    char buf[16];
    int64_t sender = 0;
    size_t len = 0;
    return nimbus_recv(buf, sizeof buf, &sender, &len) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "child") == 0) return child();
    if (argc != 3) {
        fprintf(stderr, "usage: fan_out N FILE\n");
        return 2;
    }
    int n = atoi(argv[1]);
    if (n <= 0 || n > MAX_CHILDREN) {
        fprintf(stderr, "fan_out: N must be 1..%d\n", MAX_CHILDREN);
        return 2;
    }
    int64_t pids[MAX_CHILDREN];
    const char *child_args[] = {"child"};
    for (int i = 0; i < n; i++) {
        pids[i] = nimbus_spawn("", 1, child_args);
        if (pids[i] <= 0) {
            fprintf(stderr, "fan_out: spawn %d failed: %" PRId64 "\n", i, pids[i]);
            return 1;
        }
    }
    printf("spawned %d\n", n);
    fflush(stdout);

    struct stat st;
    const struct timespec tick = {0, 10 * 1000 * 1000};
    while (stat(argv[2], &st) != 0) nanosleep(&tick, NULL);

    for (int i = 0; i < n; i++) {
        int sent = nimbus_send(pids[i], "go", 2);
        int32_t status = 0;
        int waited = nimbus_wait(pids[i], &status);
        if (sent == 0 && waited == 0)
            printf("child %d: exited %d\n", i, (int)status);
        else
            printf("child %d: lost (send %d, wait %d, status %d)\n", i, sent, waited, (int)status);
    }
    return 0;
}
