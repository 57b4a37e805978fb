// Kernel: dense matrix multiply, c = a * b, n x n doubles in i-k-j order, `reps`
// times. `kernel_matmul [N [REPS]]` (default 384 8) prints a position-weighted
// checksum of c. Built for wasm by scripts/build-guests.sh and natively by the
// kernels benchmark from this same file.
#include <stdio.h>
#include <stdlib.h>

static double next(unsigned long long *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 384;
    int reps = argc > 2 ? atoi(argv[2]) : 8;
    double *a = malloc(sizeof(double) * n * n);
    double *b = malloc(sizeof(double) * n * n);
    double *c = malloc(sizeof(double) * n * n);
    if (!a || !b || !c) return 1;
    unsigned long long state = 1;
    for (int i = 0; i < n * n; i++) a[i] = next(&state);
    for (int i = 0; i < n * n; i++) b[i] = next(&state);
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < n * n; i++) c[i] = 0.0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < n; k++) {
                double aik = a[i * n + k];
                for (int j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j];
            }
    }
    double sum = 0.0;
    for (int i = 0; i < n * n; i++) sum += c[i] * (double)(i % 7 + 1);
    printf("matmul n=%d reps=%d checksum=%.9e\n", n, reps, sum);
    return 0;
}
