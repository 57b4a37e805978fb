// Kernel: Jacobi iterations of the 5-point Laplace stencil on an n x n grid of
// doubles with fixed edges. `kernel_stencil [N [ITERATIONS]]` (default 1024 240)
// prints a position-weighted checksum of the grid. Built for wasm by
// scripts/build-guests.sh and natively by the kernels benchmark from this same file.
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1024;
    int iterations = argc > 2 ? atoi(argv[2]) : 240;
    double *grid = calloc((size_t)n * n, sizeof(double));
    double *next = calloc((size_t)n * n, sizeof(double));
    if (!grid || !next) return 1;
    for (int i = 0; i < n; i++) {
        grid[i] = next[i] = 1.0;                              // top edge
        grid[(n - 1) * n + i] = next[(n - 1) * n + i] = -1.0; // bottom edge
        grid[i * n] = next[i * n] = (double)i / n;            // left edge
    }
    for (int it = 0; it < iterations; it++) {
        for (int i = 1; i < n - 1; i++)
            for (int j = 1; j < n - 1; j++)
                next[i * n + j] = 0.25 * (grid[(i - 1) * n + j] + grid[(i + 1) * n + j] +
                                          grid[i * n + j - 1] + grid[i * n + j + 1]);
        double *t = grid;
        grid = next;
        next = t;
    }
    double sum = 0.0;
    for (int i = 0; i < n * n; i++) sum += grid[i] * (double)(i % 5 + 1);
    printf("stencil n=%d iterations=%d checksum=%.9e\n", n, iterations, sum);
    return 0;
}
