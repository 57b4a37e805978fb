/*
 * Two-tier state from C through nimbus.h: every operation on both tiers, local
 * values moved between hosts by push and pull, and a counter in the global tier
 * incremented under its lock by children spread over the hosts.
 *
 *     nimbus run --hosts 3 [--state redis://...] c-state-check.wasm
 *
 * Prints "state-check ok" and exits 0, or names the first failed check and exits 1.
 */
#include <stdio.h>
#include <string.h>

#include "nimbus.h"

#define CHILDREN 4
#define INCREMENTS 25

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "state-check: failed at line %d: %s\n", __LINE__,  \
                    #cond);                                                    \
            return 1;                                                          \
        }                                                                      \
    } while (0)

static long long read_counter(void) {
    long long value = 0;
    size_t len = 0;
    if (nimbus_state_get(NIMBUS_GLOBAL, "counter", &value, sizeof value, &len) != 0)
        return 0;
    return value;
}

/* A child: the parent's pushed greeting reaches its host by pull; then it adds
 * to the global counter under the lock. */
static int child(void) {
    char greeting[64] = {0};
    size_t len = 0;
    CHECK(nimbus_state_pull("greeting") == 0);
    CHECK(nimbus_state_get(NIMBUS_LOCAL, "greeting", greeting, sizeof greeting, &len) == 0);
    CHECK(len == 5 && memcmp(greeting, "hello", 5) == 0);
    for (int i = 0; i < INCREMENTS; i++) {
        CHECK(nimbus_state_lock("counter", 10000, 30000) == 0);
        long long value = read_counter() + 1;
        CHECK(nimbus_state_set(NIMBUS_GLOBAL, "counter", &value, sizeof value) == 0);
        CHECK(nimbus_state_unlock("counter") == 0);
    }
    return 0;
}

static int tier_operations(int tier) {
    char buf[32];
    size_t len = 0;
    nimbus_state_delete(tier, "k");
    CHECK(nimbus_state_get(tier, "k", buf, sizeof buf, &len) == NIMBUS_ERR_NOT_FOUND);
    CHECK(nimbus_state_set(tier, "k", "value\0with nul", 14) == 0);
    CHECK(nimbus_state_get(tier, "k", buf, sizeof buf, &len) == 0);
    CHECK(len == 14 && memcmp(buf, "value\0with nul", 14) == 0);
    CHECK(nimbus_state_get(tier, "k", buf, 3, &len) == NIMBUS_ERR_BUFFER_TOO_SMALL && len == 14);
    /* Ranges: at an offset, past the end, and extending with zeros. */
    CHECK(nimbus_state_get_range(tier, "k", 6, buf, 4, &len) == 0);
    CHECK(len == 4 && memcmp(buf, "with", 4) == 0);
    CHECK(nimbus_state_get_range(tier, "k", 12, buf, 10, &len) == 0 && len == 2);
    CHECK(nimbus_state_set_range(tier, "k", 16, "XY", 2) == 0);
    CHECK(nimbus_state_get(tier, "k", buf, sizeof buf, &len) == 0 && len == 18);
    CHECK(buf[14] == 0 && buf[15] == 0 && buf[16] == 'X');
    CHECK(nimbus_state_append(tier, "k", "!!", 2) == 20);
    CHECK(nimbus_state_delete(tier, "k") == 0);
    CHECK(nimbus_state_delete(tier, "k") == NIMBUS_ERR_NOT_FOUND);
    CHECK(nimbus_state_set(tier, "", "x", 1) == NIMBUS_ERR_INVALID);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "child") == 0) return child();

    CHECK(tier_operations(NIMBUS_LOCAL) == 0);
    CHECK(tier_operations(NIMBUS_GLOBAL) == 0);
    CHECK(nimbus_state_set(7, "k", "x", 1) == NIMBUS_ERR_INVALID);

    /* Push and pull between the tiers. */
    nimbus_state_delete(NIMBUS_GLOBAL, "greeting");
    CHECK(nimbus_state_push("greeting") == NIMBUS_ERR_NOT_FOUND);
    CHECK(nimbus_state_set(NIMBUS_LOCAL, "greeting", "hello", 5) == 0);
    CHECK(nimbus_state_push("greeting") == 0);

    /* Locks: held, a second taker times out, released, taken again. */
    CHECK(nimbus_state_lock("counter", 10000, 1000) == 0);
    CHECK(nimbus_state_lock("counter", 10000, 50) == NIMBUS_ERR_TIMED_OUT);
    CHECK(nimbus_state_unlock("counter") == 0);
    CHECK(nimbus_state_unlock("counter") == NIMBUS_ERR_INVALID);

    long long zero = 0;
    CHECK(nimbus_state_set(NIMBUS_GLOBAL, "counter", &zero, sizeof zero) == 0);
    int64_t children[CHILDREN];
    const char *args[] = {"child"};
    for (int i = 0; i < CHILDREN; i++) {
        children[i] = nimbus_spawn("", 1, args);
        CHECK(children[i] > 0);
    }
    for (int i = 0; i < CHILDREN; i++) {
        int32_t status = -1;
        CHECK(nimbus_wait(children[i], &status) == 0 && status == 0);
    }
    CHECK(read_counter() == CHILDREN * INCREMENTS);
    printf("state-check ok\n");
    return 0;
}
