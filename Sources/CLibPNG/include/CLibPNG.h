// CLibPNG: libpng behind plain C functions that return error strings instead of longjmp-ing.
//
// libpng reports errors with longjmp, which must never cross a Swift frame. Every setjmp, every
// libpng read and write call and every longjmp stays inside CLibPNG.c; these functions return a
// status code and fill a caller-provided message buffer instead.
//
// Thread safety: the functions keep no global state; concurrent calls on different buffers are safe.
#ifndef AUTODIR_CLIBPNG_H
#define AUTODIR_CLIBPNG_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Largest accepted width or height, checked against the IHDR before any pixel memory is allocated.
#define CLIBPNG_MAX_SIDE 32768u
/// Largest accepted width × height (2^28), checked against the IHDR before any pixel memory is allocated.
#define CLIBPNG_MAX_PIXELS 268435456ull
/// A message buffer of this size always holds a whole message.
#define CLIBPNG_ERROR_SIZE 512

typedef enum clibpng_status {
    CLIBPNG_OK = 0,
    CLIBPNG_ERR_IO = 1,        ///< the file could not be opened, read or written
    CLIBPNG_ERR_FORMAT = 2,    ///< not a PNG, corrupt or truncated data
    CLIBPNG_ERR_TOO_LARGE = 3, ///< width, height or pixel count above the limits
    CLIBPNG_ERR_ARGUMENT = 4,  ///< bad argument (NULL pointer, zero size, bit depth not 8 or 16)
    CLIBPNG_ERR_MEMORY = 5,    ///< out of memory
} clibpng_status;

/// Decodes a PNG held in memory to RGB float32 planes in [0, 1].
///
/// Every PNG colour type and bit depth is accepted: gray is replicated to RGB, palettes are
/// expanded, alpha (and tRNS) is dropped, 16-bit samples keep their precision (v / 65535),
/// 1/2/4/8-bit samples become v / (2^depth − 1). No gamma or colour-profile conversion is applied.
/// On success `*out_planes` holds 3 × height × width floats laid out as [R plane, G plane, B plane]
/// (CHW), allocated with malloc; release it with `clibpng_free`. On failure nothing is allocated,
/// `*out_planes` is NULL and `error` (if not NULL) holds a NUL-terminated message.
clibpng_status clibpng_decode_memory(const uint8_t *data, size_t size,
                                     float **out_planes, uint32_t *out_width, uint32_t *out_height,
                                     char *error, size_t error_size);

/// Same as `clibpng_decode_memory`, reading the file at `path`; CLIBPNG_ERR_IO if it cannot be opened.
clibpng_status clibpng_decode_file(const char *path,
                                   float **out_planes, uint32_t *out_width, uint32_t *out_height,
                                   char *error, size_t error_size);

/// Encodes interleaved RGB samples as a PNG (colour type RGB, non-interlaced).
///
/// `pixels` holds height × width × 3 samples, row-major: one byte each when `bit_depth` is 8,
/// two big-endian bytes each when it is 16. On success `*out_data` (malloc'd; release with
/// `clibpng_free`) holds `*out_size` bytes of PNG. Width and height obey the same limits as decoding.
clibpng_status clibpng_encode_rgb(const uint8_t *pixels, uint32_t width, uint32_t height, int bit_depth,
                                  uint8_t **out_data, size_t *out_size,
                                  char *error, size_t error_size);

/// Frees a buffer returned by this library (NULL is allowed).
void clibpng_free(void *pointer);

#ifdef __cplusplus
}
#endif
#endif
