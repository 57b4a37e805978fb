// Kernel: a bottom-up merge sort of generated 32-bit keys. `kernel_sort [N]`
// (default 2000000) prints a position-weighted checksum of the sorted keys. Built
// for wasm by scripts/build-guests.sh and natively by the kernels benchmark from
// this same file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    unsigned *keys = malloc(sizeof(unsigned) * n);
    unsigned *spare = malloc(sizeof(unsigned) * n);
    if (!keys || !spare) return 1;
    unsigned long long state = 11;
    for (long i = 0; i < n; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        keys[i] = (unsigned)(state >> 32);
    }
    for (long width = 1; width < n; width *= 2) {
        for (long lo = 0; lo < n; lo += 2 * width) {
            long mid = lo + width < n ? lo + width : n;
            long hi = lo + 2 * width < n ? lo + 2 * width : n;
            long i = lo, j = mid, k = lo;
            while (i < mid && j < hi) spare[k++] = keys[i] <= keys[j] ? keys[i++] : keys[j++];
            while (i < mid) spare[k++] = keys[i++];
            while (j < hi) spare[k++] = keys[j++];
        }
        unsigned *t = keys;
        keys = spare;
        spare = t;
    }
    unsigned long long sum = 0;
    for (long i = 0; i < n; i++) {
        if (i > 0 && keys[i - 1] > keys[i]) return 1;
        sum += (unsigned long long)keys[i] * (unsigned long long)(i % 1009 + 1);
    }
    printf("sort n=%ld checksum=%llu\n", n, sum);
    return 0;
}
