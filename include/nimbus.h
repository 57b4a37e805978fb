/*
 * nimbus.h - header-only C interface to the nimbus host ABI, version 0.
 *
 * The ABI is specified in docs/abi.md at the root of the nimbus repository. A nimbus
 * process is a wasm32-wasip1 (wasm32-wasi) command module that may import the
 * functions below from the import module "nimbus". Nothing needs to be linked: include
 * this header and build with e.g.
 *
 *     clang --target=wasm32-wasi -O2 -I include prog.c -o prog.wasm
 *
 * The raw imports (nimbus_sys_*) take and return exactly what the ABI specifies; the
 * static inline helpers (nimbus_*) wrap them with C-friendly types. All functions
 * return a negative NIMBUS_ERR_* code on failure.
 */
#ifndef NIMBUS_H
#define NIMBUS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__wasm32__)
#error "nimbus.h is for wasm32-wasi guests (clang --target=wasm32-wasi)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (docs/abi.md, "Error codes"). */

/** Bad pointer, length, UTF-8 or argument. */
#define NIMBUS_ERR_INVALID (-1)
/** No live process has that pid. */
#define NIMBUS_ERR_NO_SUCH_PROCESS (-2)
/** wait on a pid that is not an unreaped child of the caller. */
#define NIMBUS_ERR_NOT_CHILD (-3)
/** The waited child failed; status holds the failure's nimbus exit code
 *  (132 trap, 133 memory limit, 134 deadline). */
#define NIMBUS_ERR_CHILD_FAILED (-4)
/** spawn: the module is missing, not WebAssembly, invalid, has no _start, or imports
 *  something unknown. */
#define NIMBUS_ERR_MODULE (-5)
/** spawn: the process quota of the host or app is used up; send: a new channel was
 *  needed while the sender or the receiver holds 1,024. */
#define NIMBUS_ERR_QUOTA (-6)
/** send: message over 16 MiB. */
#define NIMBUS_ERR_TOO_LARGE (-7)
/** recv: message longer than the buffer; the needed length was written to len. */
#define NIMBUS_ERR_BUFFER_TOO_SMALL (-8)
/** The platform failed; the host log says more. */
#define NIMBUS_ERR_INTERNAL (-9)
/** state: no value under that key. */
#define NIMBUS_ERR_NOT_FOUND (-10)
/** state_lock: the lock was not free within the timeout. */
#define NIMBUS_ERR_TIMED_OUT (-11)

/** The largest message send accepts (16 MiB). */
#define NIMBUS_MAX_MESSAGE_LEN (16u << 20)

/* Raw imports. Pointers are i32 offsets into linear memory on wasm32. */

/** pid() -> i64: the caller's own process id (> 0). */
__attribute__((import_module("nimbus"), import_name("pid")))
int64_t nimbus_sys_pid(void);

/** spawn(module_ptr, module_len, argv_ptr, argv_len: i32) -> i64: starts a child;
 *  returns its pid (> 0) or an error (< 0). argv is each argument followed by a NUL. */
__attribute__((import_module("nimbus"), import_name("spawn")))
int64_t nimbus_sys_spawn(const char *module_ptr, int32_t module_len,
                         const char *argv_ptr, int32_t argv_len);

/** wait(pid: i64, status_ptr: i32) -> i32: blocks until child pid ends and reaps it. */
__attribute__((import_module("nimbus"), import_name("wait")))
int32_t nimbus_sys_wait(int64_t pid, int32_t *status_ptr);

/** send(pid: i64, data_ptr, data_len: i32) -> i32: sends data to pid. */
__attribute__((import_module("nimbus"), import_name("send")))
int32_t nimbus_sys_send(int64_t pid, const void *data_ptr, int32_t data_len);

/** recv(buf_ptr, buf_cap, sender_ptr, len_ptr: i32) -> i32: blocks for a message. */
__attribute__((import_module("nimbus"), import_name("recv")))
int32_t nimbus_sys_recv(void *buf_ptr, int32_t buf_cap, int64_t *sender_ptr,
                        int32_t *len_ptr);

/** send_parts(pid: i64, head_ptr, head_len, body_ptr, body_len: i32) -> i32: sends
 *  head followed by body as one message, without joining them in guest memory. */
__attribute__((import_module("nimbus"), import_name("send_parts")))
int32_t nimbus_sys_send_parts(int64_t pid, const void *head_ptr, int32_t head_len,
                              const void *body_ptr, int32_t body_len);

/** recv_parts(head_ptr, head_cap, body_ptr, body_cap, sender_ptr, len_ptr: i32) -> i32:
 *  like recv, but the message's first head_cap bytes go to head and the rest to body. */
__attribute__((import_module("nimbus"), import_name("recv_parts")))
int32_t nimbus_sys_recv_parts(void *head_ptr, int32_t head_cap, void *body_ptr,
                              int32_t body_cap, int64_t *sender_ptr, int32_t *len_ptr);

/** world_size() -> i32: how many ranks the caller's world has (1 outside a world). */
__attribute__((import_module("nimbus"), import_name("world_size")))
int32_t nimbus_sys_world_size(void);

/** world_rank() -> i32: the caller's rank in its world (0 outside a world). */
__attribute__((import_module("nimbus"), import_name("world_rank")))
int32_t nimbus_sys_world_rank(void);

/** world_pid(rank: i32) -> i64: the pid of a rank of the caller's world, or
 *  NIMBUS_ERR_INVALID if there is no such rank. */
__attribute__((import_module("nimbus"), import_name("world_pid")))
int64_t nimbus_sys_world_pid(int32_t rank);

/* State: tier 0 is this host's local tier, 1 the global tier (NIMBUS_LOCAL,
 * NIMBUS_GLOBAL). Keys are names within the caller's app. See docs/abi.md. */
#define NIMBUS_LOCAL 0
#define NIMBUS_GLOBAL 1

__attribute__((import_module("nimbus"), import_name("state_get")))
int32_t nimbus_sys_state_get(int32_t tier, const char *key, int32_t key_len, void *buf,
                             int32_t buf_cap, int32_t *len_ptr);
__attribute__((import_module("nimbus"), import_name("state_get_range")))
int32_t nimbus_sys_state_get_range(int32_t tier, const char *key, int32_t key_len,
                                   int64_t offset, void *buf, int32_t buf_len,
                                   int32_t *len_ptr);
__attribute__((import_module("nimbus"), import_name("state_set")))
int32_t nimbus_sys_state_set(int32_t tier, const char *key, int32_t key_len,
                             const void *value, int32_t value_len);
__attribute__((import_module("nimbus"), import_name("state_set_range")))
int32_t nimbus_sys_state_set_range(int32_t tier, const char *key, int32_t key_len,
                                   int64_t offset, const void *bytes, int32_t len);
__attribute__((import_module("nimbus"), import_name("state_append")))
int64_t nimbus_sys_state_append(int32_t tier, const char *key, int32_t key_len,
                                const void *bytes, int32_t len);
__attribute__((import_module("nimbus"), import_name("state_delete")))
int32_t nimbus_sys_state_delete(int32_t tier, const char *key, int32_t key_len);
__attribute__((import_module("nimbus"), import_name("state_push")))
int32_t nimbus_sys_state_push(const char *key, int32_t key_len);
__attribute__((import_module("nimbus"), import_name("state_pull")))
int32_t nimbus_sys_state_pull(const char *key, int32_t key_len);
__attribute__((import_module("nimbus"), import_name("state_lock")))
int32_t nimbus_sys_state_lock(const char *key, int32_t key_len, int64_t lease_ms,
                              int64_t timeout_ms);
__attribute__((import_module("nimbus"), import_name("state_unlock")))
int32_t nimbus_sys_state_unlock(const char *key, int32_t key_len);

/* Helpers. */

/** The caller's own process id. Process ids are cluster-unique and never 0. */
static inline int64_t nimbus_pid(void) { return nimbus_sys_pid(); }

/**
 * Starts a child process and returns its pid (> 0) or a NIMBUS_ERR_* code (< 0).
 *
 * module: a module of the caller's app (for `nimbus run PROG.wasm`, a file name such
 * as "child.wasm" next to PROG.wasm), or "" (or NULL) for the caller's own module.
 * argc/argv: the child's arguments; the host sets the child's argv[0] to the module
 * name, so these become argv[1..]. The child inherits environment, preopens,
 * stdout/stderr, limits and deadline; its stdin is empty. Returns once the child is
 * admitted (a full host queues it). Allocates a temporary buffer with malloc;
 * returns NIMBUS_ERR_INTERNAL if that fails.
 */
static inline int64_t nimbus_spawn(const char *module, int argc,
                                   const char *const *argv) {
    if (module == NULL) module = "";
    if (argc < 0 || (argc > 0 && argv == NULL)) return NIMBUS_ERR_INVALID;
    size_t module_len = strlen(module);
    size_t total = 0;
    for (int i = 0; i < argc; i++) {
        if (argv[i] == NULL) return NIMBUS_ERR_INVALID;
        total += strlen(argv[i]) + 1;
        if (total > INT32_MAX) return NIMBUS_ERR_INVALID;
    }
    if (module_len > INT32_MAX) return NIMBUS_ERR_INVALID;
    char *buf = (char *)malloc(total > 0 ? total : 1);
    if (buf == NULL) return NIMBUS_ERR_INTERNAL;
    size_t off = 0;
    for (int i = 0; i < argc; i++) {
        size_t len = strlen(argv[i]) + 1; /* including the NUL terminator */
        memcpy(buf + off, argv[i], len);
        off += len;
    }
    int64_t pid = nimbus_sys_spawn(module, (int32_t)module_len, buf, (int32_t)total);
    free(buf);
    return pid;
}

/**
 * Blocks until child pid ends and reaps it. Returns 0 and stores the child's exit
 * code in *status; or NIMBUS_ERR_CHILD_FAILED and stores the failure's nimbus exit
 * code (132 trap, 133 memory limit, 134 deadline) in *status; or another
 * NIMBUS_ERR_* code (NIMBUS_ERR_NOT_CHILD: not an unreaped child). status may be NULL.
 */
static inline int nimbus_wait(int64_t pid, int32_t *status) {
    int32_t st = 0;
    int32_t ret = nimbus_sys_wait(pid, &st);
    if (status != NULL) *status = st;
    return ret;
}

/**
 * Sends len bytes at data (at most 16 MiB) to process pid, blocking while its mailbox
 * is full. Returns 0 or a NIMBUS_ERR_* code (NIMBUS_ERR_NO_SUCH_PROCESS if pid does not
 * exist or has ended, NIMBUS_ERR_TOO_LARGE over 16 MiB).
 */
static inline int nimbus_send(int64_t pid, const void *data, size_t len) {
    if (len > INT32_MAX) return NIMBUS_ERR_TOO_LARGE;
    return nimbus_sys_send(pid, data, (int32_t)len);
}

/**
 * Blocks until the next message arrives and copies it into buf (capacity cap). On
 * success returns 0, stores the sender's pid in *sender and the message length in
 * *len. If the message is longer than cap, returns NIMBUS_ERR_BUFFER_TOO_SMALL, stores
 * the needed length in *len and keeps the message queued: retry with a buffer of at
 * least *len bytes. sender and len may be NULL.
 */
static inline int nimbus_recv(void *buf, size_t cap, int64_t *sender, size_t *len) {
    int64_t from = 0;
    int32_t n = 0;
    int32_t ret = nimbus_sys_recv(buf, cap > INT32_MAX ? INT32_MAX : (int32_t)cap,
                                  &from, &n);
    if (sender != NULL) *sender = from;
    if (len != NULL) *len = n > 0 ? (size_t)n : 0;
    return ret;
}

/**
 * Copies the value of key into buf (capacity cap) and its length into *len; returns
 * 0, NIMBUS_ERR_NOT_FOUND, or NIMBUS_ERR_BUFFER_TOO_SMALL with the needed length in
 * *len (len may be NULL).
 */
static inline int nimbus_state_get(int tier, const char *key, void *buf, size_t cap,
                                   size_t *len) {
    int32_t n = 0;
    int ret = nimbus_sys_state_get(tier, key, (int32_t)strlen(key), buf,
                                   cap > INT32_MAX ? INT32_MAX : (int32_t)cap, &n);
    if (len != NULL) *len = n > 0 ? (size_t)n : 0;
    return ret;
}

/** Reads up to len bytes of key's value at offset into buf; *read gets how many (fewer
 *  past the end). Returns 0 or an error. */
static inline int nimbus_state_get_range(int tier, const char *key, uint64_t offset,
                                         void *buf, size_t len, size_t *read) {
    int32_t n = 0;
    if (len > INT32_MAX || offset > INT64_MAX) return NIMBUS_ERR_INVALID;
    int ret = nimbus_sys_state_get_range(tier, key, (int32_t)strlen(key), (int64_t)offset,
                                         buf, (int32_t)len, &n);
    if (read != NULL) *read = n > 0 ? (size_t)n : 0;
    return ret;
}

/** Sets key's value. Returns 0 or an error. */
static inline int nimbus_state_set(int tier, const char *key, const void *value,
                                   size_t len) {
    if (len > INT32_MAX) return NIMBUS_ERR_TOO_LARGE;
    return nimbus_sys_state_set(tier, key, (int32_t)strlen(key), value, (int32_t)len);
}

/** Writes len bytes at offset into key's value, extending it with zeros if need be. */
static inline int nimbus_state_set_range(int tier, const char *key, uint64_t offset,
                                         const void *bytes, size_t len) {
    if (len > INT32_MAX) return NIMBUS_ERR_TOO_LARGE;
    if (offset > INT64_MAX) return NIMBUS_ERR_INVALID;
    return nimbus_sys_state_set_range(tier, key, (int32_t)strlen(key), (int64_t)offset,
                                      bytes, (int32_t)len);
}

/** Appends to key's value; returns its new length (>= 0) or an error (< 0). */
static inline int64_t nimbus_state_append(int tier, const char *key, const void *bytes,
                                          size_t len) {
    if (len > INT32_MAX) return NIMBUS_ERR_TOO_LARGE;
    return nimbus_sys_state_append(tier, key, (int32_t)strlen(key), bytes, (int32_t)len);
}

/** Deletes key; returns 0 or NIMBUS_ERR_NOT_FOUND. */
static inline int nimbus_state_delete(int tier, const char *key) {
    return nimbus_sys_state_delete(tier, key, (int32_t)strlen(key));
}

/** Copies key's local value to the global tier (NIMBUS_ERR_NOT_FOUND if none). */
static inline int nimbus_state_push(const char *key) {
    return nimbus_sys_state_push(key, (int32_t)strlen(key));
}

/** Copies key's global value into this host's local tier (NIMBUS_ERR_NOT_FOUND if none). */
static inline int nimbus_state_pull(const char *key) {
    return nimbus_sys_state_pull(key, (int32_t)strlen(key));
}

/** Takes key's global lock, waiting up to timeout_ms (NIMBUS_ERR_TIMED_OUT); the lock
 *  expires after lease_ms unless released with nimbus_state_unlock. */
static inline int nimbus_state_lock(const char *key, int64_t lease_ms, int64_t timeout_ms) {
    return nimbus_sys_state_lock(key, (int32_t)strlen(key), lease_ms, timeout_ms);
}

/** Releases key's global lock, which the caller must hold. */
static inline int nimbus_state_unlock(const char *key) {
    return nimbus_sys_state_unlock(key, (int32_t)strlen(key));
}

/**
 * For service handlers: reads the whole request body (the handler's stdin) into a new
 * NUL-terminated buffer, which the caller frees, and stores its length in *len (when
 * len is not NULL). Returns NULL if memory runs out.
 *
 * It clears stdin's end-of-file flag first. stdio keeps that flag across requests, so a
 * handler that reads with fgets or scanf and reaches the end of one body sees every
 * later body as empty unless it calls clearerr(stdin) before reading (nimbus notes a
 * body left unread in the app's log).
 */
static inline char *nimbus_read_body(size_t *len) {
    clearerr(stdin);
    size_t size = 0, capacity = 256;
    char *body = (char *)malloc(capacity);
    if (body == NULL) return NULL;
    for (;;) {
        size += fread(body + size, 1, capacity - size - 1, stdin);
        if (size < capacity - 1) break;
        char *bigger = (char *)realloc(body, capacity * 2);
        if (bigger == NULL) {
            free(body);
            return NULL;
        }
        body = bigger;
        capacity *= 2;
    }
    body[size] = '\0';
    if (len != NULL) *len = size;
    return body;
}

#ifdef __cplusplus
}
#endif

#endif /* NIMBUS_H */
