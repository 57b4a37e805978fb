/*
 * MPI micro-benchmarks from one source, for nimbus (clang -I include, mpi.h) and for
 * a native MPI (mpicc; `"mpi.h"` then resolves to the system's):
 *
 *   pingpong   ranks 0 and 1 bounce messages of 8 B to 1 MiB
 *   bandwidth  rank 0 streams batches of 1 MiB messages to rank 1, which acknowledges
 *              each batch
 *   allreduce  every rank sums 1 MiB of doubles with MPI_Allreduce (result checked)
 *
 * Rank 0 prints one line per figure, in microseconds:
 *   pingpong SIZE P50 P99      (one way: half the round trip)
 *   bandwidth MIB_PER_SECOND   (median of the batches)
 *   allreduce P50 P99
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi.h"

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50 and p99 of n samples, sorted in place. */
static void percentiles(double *samples, int n, double *p50, double *p99) {
    qsort(samples, (size_t)n, sizeof *samples, compare);
    *p50 = samples[n / 2];
    *p99 = samples[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
}

static int pingpong(int rank) {
    enum { WARMUP = 200, ROUNDS = 1000 };
    static double samples[ROUNDS];
    char *buf = malloc(1 << 20);
    if (buf == NULL) return 1;
    memset(buf, 1, 1 << 20);
    static const int sizes[] = {8, 64, 512, 4096, 32768, 262144, 1 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        int size = sizes[s];
        for (int i = 0; i < WARMUP + ROUNDS; i++) {
            double start = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(buf, size, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                MPI_Recv(buf, size, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else if (rank == 1) {
                MPI_Recv(buf, size, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, size, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
            }
            if (i >= WARMUP) samples[i - WARMUP] = (MPI_Wtime() - start) * 1e6 / 2;
        }
        if (rank == 0) {
            double p50, p99;
            percentiles(samples, ROUNDS, &p50, &p99);
            printf("pingpong %d %.2f %.2f\n", size, p50, p99);
        }
    }
    free(buf);
    return 0;
}

static int bandwidth(int rank) {
    enum { BATCHES = 7, PER_BATCH = 64, SIZE = 1 << 20 };
    double rates[BATCHES];
    char *buf = malloc(SIZE);
    char ack = 0;
    if (buf == NULL) return 1;
    memset(buf, 2, SIZE);
    for (int batch = 0; batch < BATCHES; batch++) {
        double start = MPI_Wtime();
        for (int i = 0; i < PER_BATCH; i++) {
            if (rank == 0) MPI_Send(buf, SIZE, MPI_BYTE, 1, 1, MPI_COMM_WORLD);
            if (rank == 1)
                MPI_Recv(buf, SIZE, MPI_BYTE, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
        if (rank == 1) MPI_Send(&ack, 1, MPI_BYTE, 0, 2, MPI_COMM_WORLD);
        if (rank == 0) MPI_Recv(&ack, 1, MPI_BYTE, 1, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        rates[batch] = PER_BATCH / (MPI_Wtime() - start); /* MiB per second */
    }
    if (rank == 0) {
        double p50, p99;
        percentiles(rates, BATCHES, &p50, &p99);
        printf("bandwidth %.1f\n", p50);
    }
    free(buf);
    return 0;
}

static int allreduce(int rank, int size) {
    enum { WARMUP = 5, ROUNDS = 40, COUNT = (1 << 20) / sizeof(double) };
    static double samples[ROUNDS];
    double *in = malloc(COUNT * sizeof *in), *out = malloc(COUNT * sizeof *out);
    if (in == NULL || out == NULL) return 1;
    for (int i = 0; i < COUNT; i++) in[i] = rank + i % 7;
    for (int round = 0; round < WARMUP + ROUNDS; round++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        MPI_Allreduce(in, out, COUNT, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        if (round >= WARMUP) samples[round - WARMUP] = (MPI_Wtime() - start) * 1e6;
    }
    for (int i = 0; i < COUNT; i++) {
        double expected = size * (size - 1) / 2.0 + size * (double)(i % 7);
        if (out[i] != expected) {
            fprintf(stderr, "allreduce: element %d is %f, not %f\n", i, out[i], expected);
            return 1;
        }
    }
    if (rank == 0) {
        double p50, p99;
        percentiles(samples, ROUNDS, &p50, &p99);
        printf("allreduce %.2f %.2f\n", p50, p99);
    }
    free(in);
    free(out);
    return 0;
}

int main(int argc, char **argv) {
    int rank, size, failed = 1;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *what = argc > 1 ? argv[1] : "";
    if (strcmp(what, "pingpong") == 0 && size >= 2) failed = pingpong(rank);
    else if (strcmp(what, "bandwidth") == 0 && size >= 2) failed = bandwidth(rank);
    else if (strcmp(what, "allreduce") == 0) failed = allreduce(rank, size);
    else if (rank == 0) fprintf(stderr, "usage: mpi-bench pingpong|bandwidth|allreduce (2+ ranks)\n");
    fflush(stdout);
    MPI_Finalize();
    return failed;
}
