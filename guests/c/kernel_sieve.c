// Kernel: the sieve of Eratosthenes over a byte per number. `kernel_sieve [LIMIT]`
// (default 20000000) prints how many primes are below LIMIT and the sum of the
// last thousand. Built for wasm by scripts/build-guests.sh and natively by the
// kernels benchmark from this same file.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    long limit = argc > 1 ? atol(argv[1]) : 20000000;
    unsigned char *composite = malloc(limit);
    if (!composite) return 1;
    memset(composite, 0, limit);
    long count = 0;
    for (long i = 2; i < limit; i++) {
        if (composite[i]) continue;
        count++;
        for (long long j = (long long)i * i; j < limit; j += i) composite[j] = 1;
    }
    unsigned long long tail = 0;
    long seen = 0;
    for (long i = limit - 1; i >= 2 && seen < 1000; i--)
        if (!composite[i]) {
            tail += (unsigned long long)i;
            seen++;
        }
    printf("sieve limit=%ld primes=%ld tail=%llu\n", limit, count, tail);
    return 0;
}
