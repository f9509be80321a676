// CLibPNG: libpng behind plain C functions that return error strings instead of longjmp-ing.
#ifndef AUTODIR_CLIBPNG_H
#define AUTODIR_CLIBPNG_H
#include <stddef.h>
#include <stdint.h>
#endif
