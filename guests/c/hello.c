/* The smallest nimbus program in C: prints a greeting. */
#include <stdio.h>

int main(void) {
    printf("Hello from nimbus!\n");
    return 0;
}
