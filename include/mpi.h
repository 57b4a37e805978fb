/*
 * mpi.h: a subset of MPI for nimbus, header-only.
 *
 * Plain MPI C programs build for nimbus with nothing else to link:
 *
 *     clang --target=wasm32-wasi -I include prog.c -o prog.wasm
 *     nimbus run --ranks 4 [--hosts 2] prog.wasm
 *
 * The ranks of MPI_COMM_WORLD are the processes `nimbus run --ranks N` starts
 * together (the host imports world_size/world_rank/world_pid in nimbus.h); messages
 * travel as nimbus messages, so they are ordered per sender and receiver wherever
 * the ranks run.
 *
 * Supported: MPI_Init/Finalize/Initialized/Abort, Comm_rank/Comm_size, Send/Recv
 * (with MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_Status, Get_count), Barrier, Bcast, Reduce,
 * Allreduce (also MPI_IN_PLACE), Gather, Scatter, Alltoall, Wtime; datatypes
 * MPI_CHAR, MPI_BYTE, MPI_INT, MPI_LONG, MPI_LONG_LONG, MPI_FLOAT, MPI_DOUBLE;
 * operations MPI_SUM, MPI_MIN, MPI_MAX, MPI_PROD. One communicator: MPI_COMM_WORLD.
 *
 * Limits: a message is at most 16 MiB (NIMBUS_MAX_MESSAGE_LEN, less 4 bytes of
 * header); a send blocks while the receiver has 64 MiB queued, so an Alltoall moving
 * more than that between one pair of ranks can block. MPI_Abort ends only the calling
 * rank (with the code as exit status; `nimbus run` reports it).
 *
 * The library's state is in weak globals, so the header may be included by several
 * files of one program; its functions are static inline.
 */
#ifndef NIMBUS_MPI_H
#define NIMBUS_MPI_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nimbus.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int MPI_Comm;
typedef int MPI_Datatype;
typedef int MPI_Op;

typedef struct {
    int MPI_SOURCE;
    int MPI_TAG;
    int MPI_ERROR;
    int nimbus_bytes; /* the received length, for MPI_Get_count */
} MPI_Status;

#define MPI_COMM_WORLD 0
#define MPI_CHAR 1
#define MPI_BYTE 2
#define MPI_INT 3
#define MPI_LONG 4
#define MPI_LONG_LONG 5
#define MPI_FLOAT 6
#define MPI_DOUBLE 7
#define MPI_SUM 1
#define MPI_MIN 2
#define MPI_MAX 3
#define MPI_PROD 4
#define MPI_ANY_SOURCE (-1)
#define MPI_ANY_TAG (-1)
#define MPI_STATUS_IGNORE ((MPI_Status *)0)
#define MPI_IN_PLACE ((void *)-1)
#define MPI_SUCCESS 0
#define MPI_ERR_BUFFER 1
#define MPI_ERR_COUNT 2
#define MPI_ERR_TYPE 3
#define MPI_ERR_TAG 4
#define MPI_ERR_COMM 5
#define MPI_ERR_RANK 6
#define MPI_ERR_ROOT 7
#define MPI_ERR_OP 9
#define MPI_ERR_TRUNCATE 15
#define MPI_ERR_OTHER 16
#define MPI_ERR_INTERN 17

/* Tags below zero are the collectives' own; user tags are >= 0. */
#define NIMBUS_MPI_TAG_BARRIER (-2)
#define NIMBUS_MPI_TAG_BCAST (-3)
#define NIMBUS_MPI_TAG_REDUCE (-4)
#define NIMBUS_MPI_TAG_GATHER (-5)
#define NIMBUS_MPI_TAG_SCATTER (-6)
#define NIMBUS_MPI_TAG_ALLTOALL (-7)
#define NIMBUS_MPI_TAG_ALLREDUCE (-8)
/* Allreduces of at least this many bytes go round a ring (reduce-scatter, then
 * allgather): each rank moves 2(p-1)/p of the data instead of the root moving p-1
 * times all of it. */
#define NIMBUS_MPI_RING_MIN_BYTES (64 * 1024)

/* A message that arrived before anyone asked for it. */
struct nimbus_mpi_message {
    struct nimbus_mpi_message *next;
    int source, tag, len;
    unsigned char data[];
};

#define NIMBUS_MPI_STATE __attribute__((weak))
NIMBUS_MPI_STATE int nimbus_mpi_initialized;
NIMBUS_MPI_STATE int nimbus_mpi_rank;
NIMBUS_MPI_STATE int nimbus_mpi_size;
NIMBUS_MPI_STATE int64_t *nimbus_mpi_pids;
NIMBUS_MPI_STATE struct nimbus_mpi_message *nimbus_mpi_unexpected;

static inline int nimbus_mpi_type_size(MPI_Datatype type) {
    switch (type) {
    case MPI_CHAR: case MPI_BYTE: return 1;
    case MPI_INT: return sizeof(int);
    case MPI_LONG: return sizeof(long);
    case MPI_LONG_LONG: return sizeof(long long);
    case MPI_FLOAT: return sizeof(float);
    case MPI_DOUBLE: return sizeof(double);
    default: return 0;
    }
}

static inline int MPI_Init(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    if (nimbus_mpi_initialized) return MPI_ERR_OTHER;
    nimbus_mpi_size = nimbus_sys_world_size();
    nimbus_mpi_rank = nimbus_sys_world_rank();
    nimbus_mpi_pids = (int64_t *)malloc(sizeof(int64_t) * (size_t)nimbus_mpi_size);
    if (nimbus_mpi_pids == NULL) return MPI_ERR_INTERN;
    for (int rank = 0; rank < nimbus_mpi_size; rank++) {
        nimbus_mpi_pids[rank] = nimbus_sys_world_pid(rank);
        if (nimbus_mpi_pids[rank] <= 0) return MPI_ERR_INTERN;
    }
    nimbus_mpi_initialized = 1;
    return MPI_SUCCESS;
}

static inline int MPI_Initialized(int *flag) {
    *flag = nimbus_mpi_initialized;
    return MPI_SUCCESS;
}

static inline int MPI_Finalize(void) {
    free(nimbus_mpi_pids);
    nimbus_mpi_pids = NULL;
    while (nimbus_mpi_unexpected != NULL) {
        struct nimbus_mpi_message *next = nimbus_mpi_unexpected->next;
        free(nimbus_mpi_unexpected);
        nimbus_mpi_unexpected = next;
    }
    nimbus_mpi_initialized = 0;
    return MPI_SUCCESS;
}

static inline int MPI_Abort(MPI_Comm comm, int code) {
    (void)comm;
    fprintf(stderr, "MPI_Abort: rank %d aborts with code %d\n", nimbus_mpi_rank, code);
    exit(code);
}

static inline int MPI_Comm_rank(MPI_Comm comm, int *rank) {
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    *rank = nimbus_mpi_rank;
    return MPI_SUCCESS;
}

static inline int MPI_Comm_size(MPI_Comm comm, int *size) {
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    *size = nimbus_mpi_size;
    return MPI_SUCCESS;
}

static inline double MPI_Wtime(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
}

/* Sends len bytes to rank dest under tag, with the tag as a 4-byte header. */
static inline int nimbus_mpi_send(const void *data, size_t len, int dest, int tag) {
    if (!nimbus_mpi_initialized) return MPI_ERR_OTHER;
    if (dest < 0 || dest >= nimbus_mpi_size) return MPI_ERR_RANK;
    if (len > NIMBUS_MAX_MESSAGE_LEN - 4) return MPI_ERR_COUNT;
    int32_t tag32 = tag;
    int sent = nimbus_sys_send_parts(nimbus_mpi_pids[dest], &tag32, 4, data, (int32_t)len);
    return sent == 0 ? MPI_SUCCESS : MPI_ERR_OTHER;
}

static inline int nimbus_mpi_matches(const struct nimbus_mpi_message *m, int source, int tag) {
    return (source == MPI_ANY_SOURCE || m->source == source) &&
           (tag == MPI_ANY_TAG ? m->tag >= 0 : m->tag == tag);
}

/* The rank of a sender, or -1 if it is not a rank of this world. */
static inline int nimbus_mpi_rank_of(int64_t pid) {
    for (int rank = 0; rank < nimbus_mpi_size; rank++)
        if (nimbus_mpi_pids[rank] == pid) return rank;
    return -1;
}

/* Queues a message that arrived before anyone asked for it. */
static inline int nimbus_mpi_queue(int source, int tag, const void *data, size_t len) {
    struct nimbus_mpi_message *m =
        (struct nimbus_mpi_message *)malloc(sizeof *m + (len ? len : 1));
    if (m == NULL) return MPI_ERR_INTERN;
    m->next = NULL;
    m->source = source;
    m->tag = tag;
    m->len = (int)len;
    if (len > 0) memcpy(m->data, data, len);
    struct nimbus_mpi_message **tail = &nimbus_mpi_unexpected;
    while (*tail) tail = &(*tail)->next;
    *tail = m;
    return MPI_SUCCESS;
}

/* The first queued message from source under tag, taken off the queue, or NULL. */
static inline struct nimbus_mpi_message *nimbus_mpi_queued(int source, int tag) {
    for (struct nimbus_mpi_message **at = &nimbus_mpi_unexpected; *at; at = &(*at)->next) {
        if (nimbus_mpi_matches(*at, source, tag)) {
            struct nimbus_mpi_message *found = *at;
            *at = found->next;
            return found;
        }
    }
    return NULL;
}

static inline void nimbus_mpi_status(MPI_Status *status, int source, int tag, int result,
                                     size_t bytes) {
    if (status == MPI_STATUS_IGNORE) return;
    status->MPI_SOURCE = source;
    status->MPI_TAG = tag;
    status->MPI_ERROR = result;
    status->nimbus_bytes = (int)bytes;
}

/* Receives up to len bytes from rank source under tag into data. A message that
 * arrives in order lands in data directly (recv_parts puts the tag aside); one for
 * a later receive is queued. */
static inline int nimbus_mpi_recv(void *data, size_t len, int source, int tag,
                                  MPI_Status *status) {
    if (!nimbus_mpi_initialized) return MPI_ERR_OTHER;
    if (source != MPI_ANY_SOURCE && (source < 0 || source >= nimbus_mpi_size))
        return MPI_ERR_RANK;
    struct nimbus_mpi_message *queued = nimbus_mpi_queued(source, tag);
    if (queued != NULL) {
        int result = (size_t)queued->len > len ? MPI_ERR_TRUNCATE : MPI_SUCCESS;
        size_t copied = (size_t)queued->len < len ? (size_t)queued->len : len;
        if (copied > 0) memcpy(data, queued->data, copied);
        nimbus_mpi_status(status, queued->source, queued->tag, result, copied);
        free(queued);
        return result;
    }
    for (;;) {
        int32_t tag32 = 0, total = 0;
        int64_t sender = 0;
        int got = nimbus_sys_recv_parts(&tag32, 4, data, (int32_t)len, &sender, &total);
        if (got == NIMBUS_ERR_BUFFER_TOO_SMALL) {
            /* Longer than data: take it whole, then truncate or queue it. */
            unsigned char *whole = (unsigned char *)malloc((size_t)total);
            if (whole == NULL) return MPI_ERR_INTERN;
            got = nimbus_sys_recv(whole, total, &sender, &total);
            int from = nimbus_mpi_rank_of(sender), whole_tag;
            memcpy(&whole_tag, whole, 4);
            struct nimbus_mpi_message probe = {NULL, from, whole_tag, 0};
            if (got == 0 && from >= 0 && nimbus_mpi_matches(&probe, source, tag)) {
                memcpy(data, whole + 4, len);
                free(whole);
                nimbus_mpi_status(status, from, whole_tag, MPI_ERR_TRUNCATE, len);
                return MPI_ERR_TRUNCATE;
            }
            int queued_ok = got == 0 && from >= 0
                                ? nimbus_mpi_queue(from, whole_tag, whole + 4, (size_t)total - 4)
                                : MPI_SUCCESS;
            free(whole);
            if (got != 0) return MPI_ERR_INTERN;
            if (queued_ok != MPI_SUCCESS) return queued_ok;
            continue;
        }
        if (got != 0 || total < 4) return MPI_ERR_INTERN;
        size_t bytes = (size_t)total - 4;
        int from = nimbus_mpi_rank_of(sender);
        struct nimbus_mpi_message probe = {NULL, from, tag32, 0};
        if (from < 0) continue; /* not from a rank: not MPI's */
        if (nimbus_mpi_matches(&probe, source, tag)) {
            nimbus_mpi_status(status, from, tag32, MPI_SUCCESS, bytes);
            return MPI_SUCCESS;
        }
        /* For a later receive: keep it, out of the caller's buffer. */
        int queued_ok = nimbus_mpi_queue(from, tag32, data, bytes);
        if (queued_ok != MPI_SUCCESS) return queued_ok;
    }
}

static inline int MPI_Send(const void *buf, int count, MPI_Datatype type, int dest, int tag,
                           MPI_Comm comm) {
    int size = nimbus_mpi_type_size(type);
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    if (size == 0) return MPI_ERR_TYPE;
    if (count < 0) return MPI_ERR_COUNT;
    if (tag < 0) return MPI_ERR_TAG;
    return nimbus_mpi_send(buf, (size_t)count * (size_t)size, dest, tag);
}

static inline int MPI_Recv(void *buf, int count, MPI_Datatype type, int source, int tag,
                           MPI_Comm comm, MPI_Status *status) {
    int size = nimbus_mpi_type_size(type);
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    if (size == 0) return MPI_ERR_TYPE;
    if (count < 0) return MPI_ERR_COUNT;
    if (tag < 0 && tag != MPI_ANY_TAG) return MPI_ERR_TAG;
    return nimbus_mpi_recv(buf, (size_t)count * (size_t)size, source, tag, status);
}

static inline int MPI_Get_count(const MPI_Status *status, MPI_Datatype type, int *count) {
    int size = nimbus_mpi_type_size(type);
    if (size == 0) return MPI_ERR_TYPE;
    *count = status->nimbus_bytes / size;
    return MPI_SUCCESS;
}

/* acc[i] = acc[i] op in[i] */
#define NIMBUS_MPI_COMBINE(T)                                                        \
    do {                                                                             \
        T *a = (T *)acc;                                                             \
        const T *b = (const T *)in;                                                  \
        for (int i = 0; i < count; i++) {                                            \
            switch (op) {                                                            \
            case MPI_SUM: a[i] = a[i] + b[i]; break;                                 \
            case MPI_PROD: a[i] = a[i] * b[i]; break;                                \
            case MPI_MIN: a[i] = b[i] < a[i] ? b[i] : a[i]; break;                   \
            case MPI_MAX: a[i] = b[i] > a[i] ? b[i] : a[i]; break;                   \
            }                                                                        \
        }                                                                            \
    } while (0)

static inline int nimbus_mpi_combine(void *acc, const void *in, int count, MPI_Datatype type,
                                     MPI_Op op) {
    if (op < MPI_SUM || op > MPI_PROD) return MPI_ERR_OP;
    switch (type) {
    case MPI_CHAR: NIMBUS_MPI_COMBINE(char); break;
    case MPI_BYTE: NIMBUS_MPI_COMBINE(unsigned char); break;
    case MPI_INT: NIMBUS_MPI_COMBINE(int); break;
    case MPI_LONG: NIMBUS_MPI_COMBINE(long); break;
    case MPI_LONG_LONG: NIMBUS_MPI_COMBINE(long long); break;
    case MPI_FLOAT: NIMBUS_MPI_COMBINE(float); break;
    case MPI_DOUBLE: NIMBUS_MPI_COMBINE(double); break;
    default: return MPI_ERR_TYPE;
    }
    return MPI_SUCCESS;
}

/* Binomial tree from root: each rank receives once, then sends to its subtree. */
static inline int nimbus_mpi_bcast(void *buf, size_t len, int root, int tag) {
    int size = nimbus_mpi_size, relative = (nimbus_mpi_rank - root + size) % size;
    int mask = 1, err;
    while (mask < size) {
        if (relative & mask) {
            err = nimbus_mpi_recv(buf, len, (relative - mask + root) % size, tag,
                                  MPI_STATUS_IGNORE);
            if (err) return err;
            break;
        }
        mask <<= 1;
    }
    for (mask >>= 1; mask > 0; mask >>= 1) {
        if (relative + mask < size) {
            err = nimbus_mpi_send(buf, len, (relative + mask + root) % size, tag);
            if (err) return err;
        }
    }
    return MPI_SUCCESS;
}

static inline int MPI_Bcast(void *buf, int count, MPI_Datatype type, int root, MPI_Comm comm) {
    int size = nimbus_mpi_type_size(type);
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    if (size == 0) return MPI_ERR_TYPE;
    if (count < 0) return MPI_ERR_COUNT;
    if (root < 0 || root >= nimbus_mpi_size) return MPI_ERR_ROOT;
    return nimbus_mpi_bcast(buf, (size_t)count * (size_t)size, root, NIMBUS_MPI_TAG_BCAST);
}

static inline int MPI_Reduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype type,
                             MPI_Op op, int root, MPI_Comm comm) {
    int type_size = nimbus_mpi_type_size(type), size = nimbus_mpi_size;
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    if (type_size == 0) return MPI_ERR_TYPE;
    if (count < 0) return MPI_ERR_COUNT;
    if (op < MPI_SUM || op > MPI_PROD) return MPI_ERR_OP;
    if (root < 0 || root >= size) return MPI_ERR_ROOT;
    size_t len = (size_t)count * (size_t)type_size;
    if (sendbuf == MPI_IN_PLACE) sendbuf = recvbuf;
    void *acc = malloc(len ? len : 1), *in = malloc(len ? len : 1);
    int err = MPI_SUCCESS;
    if (acc == NULL || in == NULL) {
        err = MPI_ERR_INTERN;
        goto done;
    }
    memcpy(acc, sendbuf, len);
    int relative = (nimbus_mpi_rank - root + size) % size;
    for (int mask = 1; mask < size; mask <<= 1) {
        if (relative & mask) {
            err = nimbus_mpi_send(acc, len, ((relative & ~mask) + root) % size,
                                  NIMBUS_MPI_TAG_REDUCE);
            goto done;
        }
        if ((relative | mask) < size) {
            err = nimbus_mpi_recv(in, len, ((relative | mask) + root) % size,
                                  NIMBUS_MPI_TAG_REDUCE, MPI_STATUS_IGNORE);
            if (err) goto done;
            nimbus_mpi_combine(acc, in, count, type, op);
        }
    }
    memcpy(recvbuf, acc, len);
done:
    free(acc);
    free(in);
    return err;
}

/* The first element of segment i when count elements are cut into size segments. */
static inline int nimbus_mpi_segment(int i, int count) {
    return (int)((long long)count * i / nimbus_mpi_size);
}

/* Ring allreduce of buf (count elements of type_size bytes) in place. In step s of
 * the reduce-scatter, each rank passes segment (rank - s) to its right and folds
 * segment (rank - s - 1) from its left into its own; after size - 1 steps it holds
 * segment rank + 1 whole, and the allgather passes the whole segments round. */
static inline int nimbus_mpi_ring_allreduce(void *buf, int count, int type_size,
                                            MPI_Datatype type, MPI_Op op) {
    int size = nimbus_mpi_size, rank = nimbus_mpi_rank, err = MPI_SUCCESS;
    int right = (rank + 1) % size, left = (rank + size - 1) % size;
    unsigned char *bytes = (unsigned char *)buf;
    int largest = count / size + 1;
    unsigned char *in = (unsigned char *)malloc((size_t)largest * (size_t)type_size);
    if (in == NULL) return MPI_ERR_INTERN;
    for (int phase = 0; phase < 2 && err == MPI_SUCCESS; phase++) {
        for (int step = 0; step < size - 1; step++) {
            int out_seg = (rank - step + phase + 2 * size) % size;
            int in_seg = (rank - step - 1 + phase + 2 * size) % size;
            int out_first = nimbus_mpi_segment(out_seg, count);
            int out_count = nimbus_mpi_segment(out_seg + 1, count) - out_first;
            int in_first = nimbus_mpi_segment(in_seg, count);
            int in_count = nimbus_mpi_segment(in_seg + 1, count) - in_first;
            err = nimbus_mpi_send(bytes + (size_t)out_first * type_size,
                                  (size_t)out_count * type_size, right,
                                  NIMBUS_MPI_TAG_ALLREDUCE);
            if (err) break;
            unsigned char *target = phase == 0 ? in : bytes + (size_t)in_first * type_size;
            err = nimbus_mpi_recv(target, (size_t)in_count * type_size, left,
                                  NIMBUS_MPI_TAG_ALLREDUCE, MPI_STATUS_IGNORE);
            if (err) break;
            if (phase == 0)
                nimbus_mpi_combine(bytes + (size_t)in_first * type_size, in, in_count, type, op);
        }
    }
    free(in);
    return err;
}

static inline int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count,
                                MPI_Datatype type, MPI_Op op, MPI_Comm comm) {
    int type_size = nimbus_mpi_type_size(type);
    size_t len = (size_t)count * (size_t)type_size;
    int ring = comm == MPI_COMM_WORLD && type_size > 0 && count >= nimbus_mpi_size &&
               nimbus_mpi_size > 1 && op >= MPI_SUM && op <= MPI_PROD &&
               len >= NIMBUS_MPI_RING_MIN_BYTES;
    if (ring) {
        if (sendbuf != MPI_IN_PLACE) memcpy(recvbuf, sendbuf, len);
        return nimbus_mpi_ring_allreduce(recvbuf, count, type_size, type, op);
    }
    int err = MPI_Reduce(sendbuf == MPI_IN_PLACE ? recvbuf : sendbuf, recvbuf, count, type,
                         op, 0, comm);
    if (err) return err;
    return MPI_Bcast(recvbuf, count, type, 0, comm);
}

static inline int MPI_Barrier(MPI_Comm comm) {
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    int size = nimbus_mpi_size, rank = nimbus_mpi_rank, err;
    /* Everyone reports to rank 0 up a binomial tree, then rank 0 releases everyone. */
    for (int mask = 1; mask < size; mask <<= 1) {
        if (rank & mask) {
            err = nimbus_mpi_send(NULL, 0, rank & ~mask, NIMBUS_MPI_TAG_BARRIER);
            if (err) return err;
            break;
        }
        if ((rank | mask) < size) {
            err = nimbus_mpi_recv(NULL, 0, rank | mask, NIMBUS_MPI_TAG_BARRIER,
                                  MPI_STATUS_IGNORE);
            if (err) return err;
        }
    }
    return nimbus_mpi_bcast(NULL, 0, 0, NIMBUS_MPI_TAG_BARRIER);
}

/* Checks the arguments of a collective that sends and receives, and sizes them. */
static inline int nimbus_mpi_lengths(int sendcount, MPI_Datatype sendtype, int recvcount,
                                     MPI_Datatype recvtype, MPI_Comm comm, size_t *send_len,
                                     size_t *recv_len) {
    int send_size = nimbus_mpi_type_size(sendtype), recv_size = nimbus_mpi_type_size(recvtype);
    if (comm != MPI_COMM_WORLD) return MPI_ERR_COMM;
    if (send_size == 0 || recv_size == 0) return MPI_ERR_TYPE;
    if (sendcount < 0 || recvcount < 0) return MPI_ERR_COUNT;
    *send_len = (size_t)sendcount * (size_t)send_size;
    *recv_len = (size_t)recvcount * (size_t)recv_size;
    return MPI_SUCCESS;
}

static inline int MPI_Gather(const void *sendbuf, int sendcount, MPI_Datatype sendtype,
                             void *recvbuf, int recvcount, MPI_Datatype recvtype, int root,
                             MPI_Comm comm) {
    size_t send_len, recv_len;
    int err = nimbus_mpi_lengths(sendcount, sendtype, recvcount, recvtype, comm, &send_len,
                                 &recv_len);
    if (err) return err;
    if (root < 0 || root >= nimbus_mpi_size) return MPI_ERR_ROOT;
    if (nimbus_mpi_rank != root)
        return nimbus_mpi_send(sendbuf, send_len, root, NIMBUS_MPI_TAG_GATHER);
    for (int rank = 0; rank < nimbus_mpi_size; rank++) {
        unsigned char *slot = (unsigned char *)recvbuf + (size_t)rank * recv_len;
        if (rank == root) {
            if (sendbuf != MPI_IN_PLACE) memcpy(slot, sendbuf, send_len);
            continue;
        }
        err = nimbus_mpi_recv(slot, recv_len, rank, NIMBUS_MPI_TAG_GATHER,
                                  MPI_STATUS_IGNORE);
        if (err) return err;
    }
    return MPI_SUCCESS;
}

static inline int MPI_Scatter(const void *sendbuf, int sendcount, MPI_Datatype sendtype,
                              void *recvbuf, int recvcount, MPI_Datatype recvtype, int root,
                              MPI_Comm comm) {
    size_t send_len, recv_len;
    int err = nimbus_mpi_lengths(sendcount, sendtype, recvcount, recvtype, comm, &send_len,
                                 &recv_len);
    if (err) return err;
    if (root < 0 || root >= nimbus_mpi_size) return MPI_ERR_ROOT;
    if (nimbus_mpi_rank != root)
        return nimbus_mpi_recv(recvbuf, recv_len, root, NIMBUS_MPI_TAG_SCATTER,
                               MPI_STATUS_IGNORE);
    for (int rank = 0; rank < nimbus_mpi_size; rank++) {
        const unsigned char *slot = (const unsigned char *)sendbuf + (size_t)rank * send_len;
        if (rank == root) {
            if (recvbuf != MPI_IN_PLACE) memcpy(recvbuf, slot, send_len);
            continue;
        }
        err = nimbus_mpi_send(slot, send_len, rank, NIMBUS_MPI_TAG_SCATTER);
        if (err) return err;
    }
    return MPI_SUCCESS;
}

static inline int MPI_Alltoall(const void *sendbuf, int sendcount, MPI_Datatype sendtype,
                               void *recvbuf, int recvcount, MPI_Datatype recvtype,
                               MPI_Comm comm) {
    size_t send_len, recv_len;
    int err = nimbus_mpi_lengths(sendcount, sendtype, recvcount, recvtype, comm, &send_len,
                                 &recv_len);
    if (err) return err;
    int rank = nimbus_mpi_rank, size = nimbus_mpi_size;
    /* Round k sends to rank + k and receives from rank - k: no rank waits on itself. */
    for (int k = 1; k < size; k++) {
        int to = (rank + k) % size;
        err = nimbus_mpi_send((const unsigned char *)sendbuf + (size_t)to * send_len, send_len,
                              to, NIMBUS_MPI_TAG_ALLTOALL);
        if (err) return err;
    }
    memcpy((unsigned char *)recvbuf + (size_t)rank * recv_len,
           (const unsigned char *)sendbuf + (size_t)rank * send_len, send_len);
    for (int k = 1; k < size; k++) {
        int from = (rank - k + size) % size;
        err = nimbus_mpi_recv((unsigned char *)recvbuf + (size_t)from * recv_len, recv_len,
                              from, NIMBUS_MPI_TAG_ALLTOALL, MPI_STATUS_IGNORE);
        if (err) return err;
    }
    return MPI_SUCCESS;
}

#ifdef __cplusplus
}
#endif

#endif /* NIMBUS_MPI_H */
