/*
 * Test fixture: a C service reading its request body with stdio two ways.
 *
 *   first_line  reads a line with fgets and prints it, WITHOUT clearerr(stdin): once a
 *               body ends without a newline, stdio's end-of-file flag stays set and
 *               every later body reads as empty (returns 2), which nimbus notes in
 *               the app's log
 *   body_length reads the whole body with nimbus_read_body and prints its length
 */
#include <stdio.h>
#include <stdlib.h>

#include "nimbus.h"

__attribute__((export_name("first_line"))) int first_line(void) {
    char line[256];
    if (fgets(line, sizeof line, stdin) == NULL) return 2;
    fputs(line, stdout);
    fflush(stdout);
    return 0;
}

__attribute__((export_name("body_length"))) int body_length(void) {
    size_t len = 0;
    char *body = nimbus_read_body(&len);
    if (body == NULL) return 2;
    free(body);
    printf("%zu\n", len);
    fflush(stdout);
    return 0;
}
