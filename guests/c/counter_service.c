/*
 * A service process in C: a WASI reactor (built with -mexec-model=reactor) whose
 * handlers keep state in memory between invocations, through plain stdio.
 *
 *   add    reads an integer from stdin, adds it to the total, prints the new total
 *   total  prints "TOTAL COUNT"
 *   hold   waits for a message (nimbus_recv), then prints "released"
 *   crash  wrecks the state, then traps (nimbus rolls the state back)
 *
 * Two things a C handler must do because stdio outlives one invocation: clear
 * stdin's end-of-file flag before reading (each request is a new stdin; the
 * header's nimbus_read_body does it), and flush stdout before returning (the
 * response is what was written by then).
 */
#include <stdio.h>
#include <stdlib.h>

#include "nimbus.h"

static long long total_sum;
static long long *history;
static size_t count, capacity;

__attribute__((export_name("add"))) int add(void) {
    char *body = nimbus_read_body(NULL);
    if (body == NULL) return 2;
    char *end;
    long long number = strtoll(body, &end, 10);
    int parsed = end != body;
    free(body);
    if (!parsed) {
        fprintf(stderr, "add: not an integer\n");
        return 1;
    }
    if (count == capacity) {
        size_t grown = capacity ? capacity * 2 : 16;
        long long *bigger = realloc(history, grown * sizeof *history);
        if (bigger == NULL) return 3;
        history = bigger;
        capacity = grown;
    }
    history[count++] = number;
    total_sum += number;
    printf("%lld\n", total_sum);
    fflush(stdout);
    return 0;
}

__attribute__((export_name("total"))) int total(void) {
    printf("%lld %zu\n", total_sum, count);
    fflush(stdout);
    return 0;
}

__attribute__((export_name("hold"))) int hold(void) {
    char buf[64];
    int64_t sender;
    size_t len;
    if (nimbus_recv(buf, sizeof buf, &sender, &len) != 0) return 1;
    printf("released\n");
    fflush(stdout);
    return 0;
}

__attribute__((export_name("crash"))) void crash(void) {
    /* volatile: the stores must happen even though a trap follows. */
    *(volatile long long *)&total_sum = -1;
    *(volatile size_t *)&count = 0;
    __builtin_trap();
}
