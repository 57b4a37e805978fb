/*
 * A plain MPI program: every collective of mpi.h on every supported type and
 * operation, checked on every rank against the result computed sequentially, plus
 * point-to-point order, MPI_ANY_SOURCE and truncation. Rank 0 prints one line; the
 * exit status is 1 if any check failed on any rank.
 *
 *     nimbus run --ranks 4 --hosts 3 c-mpi-check.wasm [-- trap-rank R]
 *
 * With `trap-rank R`, rank R traps after the first barrier while the others go on
 * into the collectives, which can then never complete: nimbus must end the world.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "mpi.h"

#define N 64

static int rank, size, failures;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "rank %d: ", rank);                             \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

/* Rank r's element i: small integers, so every operation is exact in every type. */
static long value(int r, int i, MPI_Op op) {
    return op == MPI_PROD ? (r + i) % 2 + 1 : (r * 7 + i * 3) % 11 + 1;
}

#define CHECK_REDUCTIONS(T, MPI_T)                                          \
    do {                                                                    \
        static const MPI_Op ops[] = {MPI_SUM, MPI_MIN, MPI_MAX, MPI_PROD};  \
        for (int o = 0; o < 4; o++) {                                       \
            MPI_Op op = ops[o];                                             \
            T in[N], out[N], expected[N];                                   \
            for (int i = 0; i < N; i++) {                                   \
                in[i] = (T)value(rank, i, op);                              \
                expected[i] = (T)value(0, i, op);                           \
                for (int r = 1; r < size; r++) {                            \
                    T v = (T)value(r, i, op);                               \
                    if (op == MPI_SUM) expected[i] += v;                    \
                    if (op == MPI_PROD) expected[i] *= v;                   \
                    if (op == MPI_MIN && v < expected[i]) expected[i] = v;  \
                    if (op == MPI_MAX && v > expected[i]) expected[i] = v;  \
                }                                                           \
            }                                                               \
            CHECK(MPI_Allreduce(in, out, N, MPI_T, op, MPI_COMM_WORLD) == 0, \
                  "allreduce " #T);                                         \
            CHECK(memcmp(out, expected, sizeof out) == 0,                   \
                  "allreduce " #T " op %d differs", op);                    \
            memset(out, 0, sizeof out);                                     \
            CHECK(MPI_Reduce(in, out, N, MPI_T, op, size - 1,               \
                             MPI_COMM_WORLD) == 0, "reduce " #T);            \
            if (rank == size - 1)                                           \
                CHECK(memcmp(out, expected, sizeof out) == 0,               \
                      "reduce " #T " op %d differs", op);                   \
        }                                                                   \
    } while (0)

static void check_point_to_point(void) {
    /* Order per sender and receiver. */
    int last = size - 1;
    if (rank == 0) {
        for (int seq = 0; seq < 50; seq++)
            CHECK(MPI_Send(&seq, 1, MPI_INT, last, 7, MPI_COMM_WORLD) == 0, "send");
    }
    if (rank == last) {
        for (int seq = 0; seq < 50; seq++) {
            int got = -1;
            MPI_Recv(&got, 1, MPI_INT, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            CHECK(got == seq, "message %d arrived as %d", seq, got);
        }
    }
    /* Any source, with the status saying who sent what. */
    if (rank != 0) {
        long mine[2] = {rank, rank * 1000L};
        MPI_Send(mine, 2, MPI_LONG, 0, 9, MPI_COMM_WORLD);
    } else {
        int seen = 0;
        for (int i = 1; i < size; i++) {
            long got[2];
            MPI_Status status;
            CHECK(MPI_Recv(got, 2, MPI_LONG, MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD,
                           &status) == 0, "recv any");
            int count = 0;
            MPI_Get_count(&status, MPI_LONG, &count);
            CHECK(status.MPI_SOURCE == got[0] && status.MPI_TAG == 9 && count == 2 &&
                      got[1] == got[0] * 1000L,
                  "any-source message from %d as %ld", status.MPI_SOURCE, got[0]);
            seen |= 1 << status.MPI_SOURCE;
        }
        CHECK(seen == ((1 << size) - 2), "senders seen %x", seen);
    }
    /* Out of order by tag: a later tag is received first, so the earlier messages
     * (one longer than that receive's buffer, one shorter) wait in the queue. */
    if (size >= 2 && rank == 0) {
        int many[100], one = 42, few[2] = {7, 8};
        for (int i = 0; i < 100; i++) many[i] = i * i;
        MPI_Send(many, 100, MPI_INT, 1, 5, MPI_COMM_WORLD);
        MPI_Send(few, 2, MPI_INT, 1, 4, MPI_COMM_WORLD);
        MPI_Send(&one, 1, MPI_INT, 1, 6, MPI_COMM_WORLD);
    }
    if (size >= 2 && rank == 1) {
        int one = 0, many[100] = {0}, few[3] = {0, 0, -1};
        CHECK(MPI_Recv(&one, 1, MPI_INT, 0, 6, MPI_COMM_WORLD, MPI_STATUS_IGNORE) == 0 &&
                  one == 42, "tag 6 first");
        CHECK(MPI_Recv(few, 3, MPI_INT, 0, 4, MPI_COMM_WORLD, MPI_STATUS_IGNORE) == 0 &&
                  few[0] == 7 && few[1] == 8 && few[2] == -1, "tag 4 from the queue");
        CHECK(MPI_Recv(many, 100, MPI_INT, 0, 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE) == 0 &&
                  many[99] == 99 * 99, "tag 5 from the queue");
    }
    /* A message longer than the buffer is an error, not an overflow. */
    int eight[8] = {1, 2, 3, 4, 5, 6, 7, 8}, four[5] = {0, 0, 0, 0, -1};
    MPI_Send(eight, 8, MPI_INT, rank, 3, MPI_COMM_WORLD);
    CHECK(MPI_Recv(four, 4, MPI_INT, rank, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE) ==
              MPI_ERR_TRUNCATE && four[3] == 4 && four[4] == -1,
          "truncation");
    CHECK(MPI_Send(eight, 1, MPI_INT, size, 0, MPI_COMM_WORLD) == MPI_ERR_RANK, "bad rank");
}

static void check_data_movement(void) {
    double broadcast[N];
    int root = 1 % size;
    for (int i = 0; i < N; i++) broadcast[i] = rank == root ? i * 0.5 : -1;
    MPI_Bcast(broadcast, N, MPI_DOUBLE, root, MPI_COMM_WORLD);
    for (int i = 0; i < N; i++) CHECK(broadcast[i] == i * 0.5, "bcast [%d]", i);

    int mine[3] = {rank * 10, rank * 10 + 1, rank * 10 + 2}, all[3 * 64];
    MPI_Gather(mine, 3, MPI_INT, all, 3, MPI_INT, 0, MPI_COMM_WORLD);
    if (rank == 0)
        for (int i = 0; i < 3 * size; i++)
            CHECK(all[i] == (i / 3) * 10 + i % 3, "gather [%d] = %d", i, all[i]);

    float parts[2 * 64], part[2] = {-1, -1};
    for (int i = 0; i < 2 * size; i++) parts[i] = rank == size - 1 ? i * 1.5f : 0;
    MPI_Scatter(parts, 2, MPI_FLOAT, part, 2, MPI_FLOAT, size - 1, MPI_COMM_WORLD);
    CHECK(part[0] == rank * 3.0f && part[1] == rank * 3.0f + 1.5f, "scatter");

    long out[64], in[64];
    for (int to = 0; to < size; to++) out[to] = rank * 100L + to;
    MPI_Alltoall(out, 1, MPI_LONG, in, 1, MPI_LONG, MPI_COMM_WORLD);
    for (int from = 0; from < size; from++)
        CHECK(in[from] == from * 100L + rank, "alltoall from %d: %ld", from, in[from]);

    for (int i = 0; i < 3; i++) CHECK(MPI_Barrier(MPI_COMM_WORLD) == 0, "barrier");
}

/* Large enough for the ring allreduce; a length no rank count divides. */
#define LARGE 20011

static void check_large_allreduce(void) {
    static int mine[LARGE], sum[LARGE], in_place[LARGE];
    for (int i = 0; i < LARGE; i++) mine[i] = in_place[i] = (rank + 1) * (i % 97) - rank;
    MPI_Allreduce(mine, sum, LARGE, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, in_place, LARGE, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    for (int i = 0; i < LARGE; i++) {
        int expected_sum = 0, expected_max = INT_MIN;
        for (int r = 0; r < size; r++) {
            int v = (r + 1) * (i % 97) - r;
            expected_sum += v;
            if (v > expected_max) expected_max = v;
        }
        CHECK(sum[i] == expected_sum, "large allreduce sum [%d] = %d", i, sum[i]);
        CHECK(in_place[i] == expected_max, "large allreduce max [%d] = %d", i, in_place[i]);
    }
}

int main(int argc, char **argv) {
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "MPI_Init failed\n");
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 31) {
        if (rank == 0) fprintf(stderr, "mpi-check runs on at most 31 ranks\n");
        MPI_Finalize();
        return 2;
    }
    if (argc == 3 && strcmp(argv[1], "trap-rank") == 0) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == atoi(argv[2])) __builtin_trap();
    }
    check_point_to_point();
    check_data_movement();
    CHECK_REDUCTIONS(int, MPI_INT);
    CHECK_REDUCTIONS(long, MPI_LONG);
    CHECK_REDUCTIONS(float, MPI_FLOAT);
    CHECK_REDUCTIONS(double, MPI_DOUBLE);
    check_large_allreduce();

    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        if (total == 0)
            printf("mpi-check: every collective agrees with the sequential result on %d ranks\n",
                   size);
        else
            printf("mpi-check: %d checks failed on %d ranks\n", total, size);
    }
    MPI_Finalize();
    return total != 0;
}
