/*
 * Test fixture for the nimbus process ABI through include/nimbus.h; same checks as the
 * Rust guests/tests/spawn-check. The parent checks its pid, spawns 3 children of its
 * own module ("" with args `child <parentpid>`), receives one "hello from <child pid>"
 * message from each, waits for all of them (each must exit 7), then checks the error
 * cases of send, wait and spawn. Prints "spawn-check ok" and exits 0, or prints what
 * failed to stderr and exits 1.
 *
 * With the argument `trap-child` it instead spawns trap.wasm from its own directory,
 * waits for it, and prints "child failed with <status>" when wait reports the failure.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nimbus.h"

#define CHILDREN 3
#define CHILD_EXIT 7

static void fail(const char *what, int64_t value) {
    fprintf(stderr, "spawn_check: %s (%" PRId64 ")\n", what, value);
    exit(1);
}

static int child(const char *parent_text) {
    char *end = NULL;
    long long parent = strtoll(parent_text, &end, 10);
    if (*parent_text == '\0' || *end != '\0' || parent <= 0) fail("child: bad parent pid", 0);
    int64_t me = nimbus_pid();
    if (me <= 0 || me == parent) fail("child: bad pid", me);
    char msg[64];
    int n = snprintf(msg, sizeof msg, "hello from %" PRId64, me);
    int ret = nimbus_send(parent, msg, (size_t)n);
    if (ret != 0) fail("child: send failed", ret);
    return CHILD_EXIT;
}

static int index_of(const int64_t *pids, int count, int64_t pid) {
    for (int i = 0; i < count; i++)
        if (pids[i] == pid) return i;
    return -1;
}

static int trap_child(void) {
    int64_t pid = nimbus_spawn("trap.wasm", 0, NULL);
    if (pid <= 0) fail("spawn(\"trap.wasm\") failed", pid);
    int32_t status = 0;
    int ret = nimbus_wait(pid, &status);
    if (ret != NIMBUS_ERR_CHILD_FAILED) fail("wait on a trapping child must be ERR_CHILD_FAILED", ret);
    printf("child failed with %d\n", (int)status);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "child") == 0) return child(argv[2]);
    if (argc == 2 && strcmp(argv[1], "trap-child") == 0) return trap_child();

    int64_t me = nimbus_pid();
    if (me <= 0) fail("pid() must be > 0", me);

    char me_text[32];
    snprintf(me_text, sizeof me_text, "%" PRId64, me);
    const char *child_args[] = {"child", me_text};

    int64_t children[CHILDREN];
    for (int i = 0; i < CHILDREN; i++) {
        int64_t pid = nimbus_spawn("", 2, child_args);
        if (pid <= 0) fail("spawn failed", pid);
        if (pid == me || index_of(children, i, pid) >= 0) fail("spawn returned a bad pid", pid);
        children[i] = pid;
    }

    int heard[CHILDREN] = {0};
    for (int i = 0; i < CHILDREN; i++) {
        char buf[256];
        int64_t sender = 0;
        size_t len = 0;
        int ret = nimbus_recv(buf, sizeof buf - 1, &sender, &len);
        if (ret != 0) fail("recv failed", ret);
        int who = index_of(children, CHILDREN, sender);
        if (who < 0) fail("message from a process that is not a child", sender);
        if (heard[who]++) fail("second message from a child", sender);
        buf[len] = '\0';
        char expected[64];
        snprintf(expected, sizeof expected, "hello from %" PRId64, sender);
        if (len != strlen(expected) || memcmp(buf, expected, len) != 0) {
            fprintf(stderr, "spawn_check: message from %" PRId64 " is \"%s\", expected \"%s\"\n",
                    sender, buf, expected);
            return 1;
        }
    }

    for (int i = 0; i < CHILDREN; i++) {
        int32_t status = -1;
        int ret = nimbus_wait(children[i], &status);
        if (ret != 0) fail("wait failed", ret);
        if (status != CHILD_EXIT) fail("child exited with the wrong code", status);
    }

    int ret = nimbus_send(999999999, "anyone?", 7);
    if (ret != NIMBUS_ERR_NO_SUCH_PROCESS) fail("send(999999999) must be ERR_NO_SUCH_PROCESS", ret);
    int32_t status = 0;
    ret = nimbus_wait(12345678, &status);
    if (ret != NIMBUS_ERR_NOT_CHILD) fail("wait(12345678) must be ERR_NOT_CHILD", ret);
    int64_t pid = nimbus_spawn("missing.wasm", 0, NULL);
    if (pid != NIMBUS_ERR_MODULE) fail("spawn(\"missing.wasm\") must be ERR_MODULE", pid);

    printf("spawn-check ok\n");
    return 0;
}
