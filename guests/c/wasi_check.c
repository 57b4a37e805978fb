/*
 * Test fixture for the WASI surface a nimbus process gets; same output as the Rust
 * guests/tests/wasi-check. Prints, in order:
 *   arg[i]=...                 for every argument, argv[0] included
 *   env GREETING=... | env GREETING unset
 *   stdin=<all of stdin, trimmed>
 *   clock ok                   if the wall clock is past 2020 and the monotonic one
 *                              does not go back
 *   random ok                  if two 32-byte draws from getentropy differ
 *   stderr works               on stderr
 *   file=<contents of /data/input.txt, trimmed>   if /data exists (a preopen),
 *                              and then writes /data/output.txt = "written by c"
 * Exits with N if the last argument is exit=N, else 0; exits 1 if file I/O fails.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Reads all of f into a NUL-terminated malloc'd buffer; NULL on error. */
static char *read_all(FILE *f) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) return NULL;
    for (;;) {
        if (len + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(buf, cap);
            if (grown == NULL) {
                free(buf);
                return NULL;
            }
            buf = grown;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                free(buf);
                return NULL;
            }
            break;
        }
    }
    buf[len] = '\0';
    return buf;
}

/* Trims ASCII whitespace in place; returns the start of the trimmed text. */
static char *trim(char *s) {
    while (*s != '\0' && isspace((unsigned char)*s)) s++;
    size_t len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1])) s[--len] = '\0';
    return s;
}

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);

    const char *greeting = getenv("GREETING");
    if (greeting != NULL)
        printf("env GREETING=%s\n", greeting);
    else
        printf("env GREETING unset\n");

    char *input = read_all(stdin);
    if (input == NULL) {
        fprintf(stderr, "wasi_check: reading stdin failed: %s\n", strerror(errno));
        return 1;
    }
    printf("stdin=%s\n", trim(input));
    free(input);

    struct timespec wall, earlier, later;
    clock_gettime(CLOCK_REALTIME, &wall);
    clock_gettime(CLOCK_MONOTONIC, &earlier);
    clock_gettime(CLOCK_MONOTONIC, &later);
    int monotonic = later.tv_sec > earlier.tv_sec ||
                    (later.tv_sec == earlier.tv_sec && later.tv_nsec >= earlier.tv_nsec);
    if (wall.tv_sec > 1600000000 && monotonic) printf("clock ok\n");
    unsigned char first[32], second[32];
    if (getentropy(first, sizeof first) != 0 || getentropy(second, sizeof second) != 0) {
        fprintf(stderr, "wasi_check: getentropy failed: %s\n", strerror(errno));
        return 1;
    }
    if (memcmp(first, second, sizeof first) != 0) printf("random ok\n");
    fprintf(stderr, "stderr works\n");

    struct stat st;
    if (stat("/data", &st) == 0 && S_ISDIR(st.st_mode)) {
        FILE *in = fopen("/data/input.txt", "rb");
        char *contents = in != NULL ? read_all(in) : NULL;
        if (contents == NULL) {
            fprintf(stderr, "wasi_check: reading /data/input.txt failed: %s\n",
                    strerror(errno));
            return 1;
        }
        fclose(in);
        printf("file=%s\n", trim(contents));
        free(contents);

        FILE *out = fopen("/data/output.txt", "wb");
        if (out == NULL || fputs("written by c", out) == EOF || fclose(out) != 0) {
            fprintf(stderr, "wasi_check: writing /data/output.txt failed: %s\n",
                    strerror(errno));
            return 1;
        }
    }

    fflush(stdout);
    if (argc > 1 && strncmp(argv[argc - 1], "exit=", 5) == 0) {
        const char *digits = argv[argc - 1] + 5;
        char *end = NULL;
        errno = 0;
        long code = strtol(digits, &end, 10);
        if (*digits != '\0' && *end == '\0' && errno == 0) exit((int)code);
    }
    return 0;
}
