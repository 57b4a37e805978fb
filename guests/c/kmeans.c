/*
 * k-means clustering with MPI, on generated data: each rank generates and owns a
 * slice of the points; every iteration assigns its points to the nearest centroid and
 * the ranks sum their partial centroids with MPI_Allreduce.
 *
 *     nimbus run --ranks R [--hosts R] c-kmeans.wasm [-- POINTS ITERATIONS]
 *
 * Rank 0 prints the time of the iterations and a checksum of the final centroids,
 * which is the same on any number of ranks (and natively, built with mpicc).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mpi.h"

#define DIMS 4
#define K 8

/* The i-th point's coordinates, the same on every rank and platform. */
static void point(uint64_t i, double out[DIMS]) {
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 1;
    int cluster = (int)(i % K);
    for (int d = 0; d < DIMS; d++) {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        double noise = (double)(x >> 11) / 9007199254740992.0 - 0.5; /* [-0.5, 0.5) */
        out[d] = cluster * 3.0 + d + noise;
    }
}

int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long points = argc > 1 ? atol(argv[1]) : 400000;
    int iterations = argc > 2 ? atoi(argv[2]) : 20;
    long first = points * rank / size, last = points * (rank + 1) / size;
    long mine = last - first;
    double *data = malloc(sizeof(double) * DIMS * (size_t)(mine > 0 ? mine : 1));
    if (data == NULL) {
        fprintf(stderr, "kmeans: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (long i = 0; i < mine; i++) point((uint64_t)(first + i), &data[i * DIMS]);

    double centroids[K][DIMS];
    for (int c = 0; c < K; c++) point((uint64_t)c * 7919 % (uint64_t)points, centroids[c]);

    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int it = 0; it < iterations; it++) {
        double sums[K * DIMS + K] = {0}; /* per-cluster coordinate sums, then counts */
        for (long i = 0; i < mine; i++) {
            const double *p = &data[i * DIMS];
            int best = 0;
            double best_distance = 1e300;
            for (int c = 0; c < K; c++) {
                double distance = 0;
                for (int d = 0; d < DIMS; d++) {
                    double delta = p[d] - centroids[c][d];
                    distance += delta * delta;
                }
                if (distance < best_distance) {
                    best_distance = distance;
                    best = c;
                }
            }
            for (int d = 0; d < DIMS; d++) sums[best * DIMS + d] += p[d];
            sums[K * DIMS + best] += 1;
        }
        MPI_Allreduce(MPI_IN_PLACE, sums, K * DIMS + K, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        for (int c = 0; c < K; c++) {
            double count = sums[K * DIMS + c];
            if (count > 0)
                for (int d = 0; d < DIMS; d++) centroids[c][d] = sums[c * DIMS + d] / count;
        }
    }
    double elapsed = MPI_Wtime() - start;
    if (rank == 0) {
        double checksum = 0;
        for (int c = 0; c < K; c++)
            for (int d = 0; d < DIMS; d++) checksum += centroids[c][d] * (c + 1) * (d + 1);
        printf("kmeans %ld points %d iterations %d ranks: %.3f s, checksum %.6f\n", points,
               iterations, size, elapsed, checksum);
    }
    free(data);
    MPI_Finalize();
    return 0;
}
