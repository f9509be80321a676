/* version.c — links libautodir.so from plain C and checks that header and library agree. */
#include <stdio.h>
#include "autodir.h"

int main(void) {
    int v = autodir_version();
    printf("libautodir %d.%d.%d (header %d.%d.%d)\n", v / 10000, (v / 100) % 100, v % 100,
           AUTODIR_VERSION_MAJOR, AUTODIR_VERSION_MINOR, AUTODIR_VERSION_PATCH);
    return v == AUTODIR_VERSION ? 0 : 1;
}
