/* nimbus test fixture for capture and restore: fills MIB MiB (argv[1], default 2)
 * with a pseudo-random sequence, prints its checksum and "ready", then sleeps MS
 * milliseconds (argv[2], default 3000; where a capture stops it), checks that its
 * memory and monotonic clock are as they were and that malloc still works, and
 * exits with code 7. A run captured in the sleep and restored prints exactly what
 * an uninterrupted run prints. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t checksum(const uint64_t *values, size_t n) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum = ((sum << 5) | (sum >> 59)) ^ (values[i] * (i | 1));
    }
    return sum;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 2;
    long ms = argc > 2 ? atol(argv[2]) : 3000;
    size_t n = mib << 17;
    uint64_t *values = malloc(n * sizeof *values);
    if (values == NULL) {
        return 1;
    }
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        values[i] = x;
    }
    uint64_t before = checksum(values, n);
    printf("%zu MiB, checksum %016llx\nready\n", mib, (unsigned long long)before);
    fflush(stdout);

    int64_t started = now_ns();
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&pause, NULL);
    int64_t slept = now_ns() - started;

    printf("memory %s\n", checksum(values, n) == before ? "kept" : "CHANGED");
    printf("clock %s\n", slept >= ms * 1000000 ? "monotonic" : "WENT BACK");
    char *fresh = malloc(1 << 20);
    if (fresh == NULL) {
        return 1;
    }
    memset(fresh, 'x', 1 << 20);
    printf("allocation %d, %s\n", fresh[12345], argv[0]);
    free(fresh);
    free(values);
    return 7;
}
