// CLibPNG: PNG decode/encode through libpng's classic API; every setjmp/longjmp stays in this file.
//
// Layout of each entry point: the public function owns a `context` (message, status, buffers to
// free) and calls an inner function that does setjmp. A libpng error longjmps back into the inner
// function, which frees what the context holds and returns its status. Keeping the state in the
// caller's struct (not in locals of the setjmp frame) avoids the "indeterminate after longjmp" rule.
#include "CLibPNG.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct context {
    clibpng_status status;          // reported when libpng longjmps; FORMAT unless set otherwise
    char message[CLIBPNG_ERROR_SIZE];
    char warning[160];              // libpng's last warning, often the detail behind a terse error
    // Input (decode): memory or a FILE.
    const uint8_t *data;
    size_t size;
    size_t offset;
    FILE *file;
    // Buffers freed on failure.
    uint8_t *rows;
    float *planes;
    // Output (encode).
    uint8_t *out;
    size_t out_size;
    size_t out_capacity;
} context;

static void context_init(context *c) {
    memset(c, 0, sizeof *c);
    c->status = CLIBPNG_OK;
}

/// Records the first failure; later ones (e.g. libpng's follow-up message) keep the first cause.
static void set_failure(context *c, clibpng_status status, const char *format, ...) {
    if (c->status != CLIBPNG_OK) return;
    c->status = status;
    va_list args;
    va_start(args, format);
    vsnprintf(c->message, sizeof c->message, format, args);
    va_end(args);
}

static clibpng_status finish(context *c, char *error, size_t error_size) {
    if (error != NULL && error_size > 0) {
        if (c->status == CLIBPNG_OK) error[0] = '\0';
        else snprintf(error, error_size, "%s", c->message);
    }
    return c->status;
}

static void on_png_error(png_structp png, png_const_charp message) {
    context *c = (context *)png_get_error_ptr(png);
    const char *text = message != NULL ? message : "unknown libpng error";
    if (c->warning[0] != '\0') {
        set_failure(c, CLIBPNG_ERR_FORMAT, "corrupt PNG data: %s (%s)", text, c->warning);
    } else {
        set_failure(c, CLIBPNG_ERR_FORMAT, "corrupt PNG data: %s", text);
    }
    png_longjmp(png, 1);
}

/// Benign problems (bad ancillary chunk CRC, extra data) are not worth a stderr line; the last one
/// is kept because libpng sometimes warns with the detail ("Image width is zero in IHDR") and then
/// fails with a summary ("Invalid IHDR data").
static void on_png_warning(png_structp png, png_const_charp message) {
    context *c = (context *)png_get_error_ptr(png);
    snprintf(c->warning, sizeof c->warning, "%s", message != NULL ? message : "");
}

/// Reads exactly `length` bytes from the context's memory or file; returns how many were read.
static size_t source_read(context *c, uint8_t *out, size_t length) {
    if (c->file != NULL) {
        size_t got = fread(out, 1, length, c->file);
        c->offset += got;
        return got;
    }
    size_t left = c->size - c->offset;
    size_t got = length < left ? length : left;
    if (got > 0) memcpy(out, c->data + c->offset, got);
    c->offset += got;
    return got;
}

static void on_png_read(png_structp png, png_bytep out, size_t length) {
    context *c = (context *)png_get_io_ptr(png);
    size_t got = source_read(c, out, length);
    if (got == length) return;
    if (c->file != NULL && ferror(c->file)) {
        set_failure(c, CLIBPNG_ERR_IO, "read error: %s", strerror(errno));
    } else {
        set_failure(c, CLIBPNG_ERR_FORMAT, "truncated PNG data: unexpected end after %zu bytes", c->offset);
    }
    png_error(png, c->message);
}

/// Checks the 8-byte signature before libpng sees anything, for a clearer message than libpng's.
static int check_signature(context *c) {
    uint8_t signature[8];
    size_t got = source_read(c, signature, sizeof signature);
    if (got < sizeof signature) {
        if (c->file != NULL && ferror(c->file)) {
            set_failure(c, CLIBPNG_ERR_IO, "read error: %s", strerror(errno));
        } else if (got == 0) {
            set_failure(c, CLIBPNG_ERR_FORMAT, "not a PNG file: the data is empty");
        } else {
            set_failure(c, CLIBPNG_ERR_FORMAT, "not a PNG file: only %zu bytes", got);
        }
        return 0;
    }
    if (png_sig_cmp(signature, 0, sizeof signature) != 0) {
        set_failure(c, CLIBPNG_ERR_FORMAT, "not a PNG file: bad signature");
        return 0;
    }
    return 1;
}

/// Converts one decoded row (8/16-bit, 1–4 channels, alpha last) into the three output planes.
static void convert_row(const uint8_t *row, uint32_t width, int channels, int depth,
                        float *r, float *g, float *b) {
    for (uint32_t x = 0; x < width; x++) {
        float v[4];
        for (int k = 0; k < channels && k < 3; k++) {
            if (depth == 16) {
                const uint8_t *p = row + ((size_t)x * (size_t)channels + (size_t)k) * 2;
                v[k] = (float)(((unsigned)p[0] << 8) | p[1]) / 65535.0f;
            } else {
                v[k] = (float)row[(size_t)x * (size_t)channels + (size_t)k] / 255.0f;
            }
        }
        if (channels <= 2) { // gray or gray+alpha
            r[x] = v[0]; g[x] = v[0]; b[x] = v[0];
        } else {              // RGB or RGBA
            r[x] = v[0]; g[x] = v[1]; b[x] = v[2];
        }
    }
}

static void decode_with(context *c, png_structp png, png_infop info,
                        float **out_planes, uint32_t *out_width, uint32_t *out_height) {
    png_set_read_fn(png, c, on_png_read);
    png_set_sig_bytes(png, 8);
    // Our own limits below give the clearer message; libpng's only guard against absurd values.
    png_set_user_limits(png, 0x7fffffffu, 0x7fffffffu);
    png_read_info(png, info);

    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, NULL, NULL);
    if (width == 0 || height == 0) {
        set_failure(c, CLIBPNG_ERR_FORMAT, "corrupt PNG data: zero width or height in IHDR");
        png_error(png, c->message);
    }
    if (width > CLIBPNG_MAX_SIDE || height > CLIBPNG_MAX_SIDE
        || (unsigned long long)width * (unsigned long long)height > CLIBPNG_MAX_PIXELS) {
        set_failure(c, CLIBPNG_ERR_TOO_LARGE,
                    "image too large: %lux%lu pixels (the limit is %u per side and %llu pixels in all)",
                    (unsigned long)width, (unsigned long)height, CLIBPNG_MAX_SIDE, CLIBPNG_MAX_PIXELS);
        png_error(png, c->message);
    }

    // Everything becomes 8- or 16-bit gray, gray+alpha, RGB or RGBA; the channel loop drops alpha.
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);

    int channels = png_get_channels(png, info);
    int depth = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (channels < 1 || channels > 4 || (depth != 8 && depth != 16)
        || rowbytes != (size_t)width * (size_t)channels * (size_t)(depth / 8)) {
        set_failure(c, CLIBPNG_ERR_FORMAT, "unsupported PNG layout: %d channels of %d bits", channels, depth);
        png_error(png, c->message);
    }

    size_t plane = (size_t)width * (size_t)height;
    c->planes = (float *)malloc(3 * plane * sizeof(float));
    // Interlaced images are assembled over several passes, so they need every row at once.
    size_t row_count = passes > 1 ? (size_t)height : 1;
    c->rows = (uint8_t *)malloc(rowbytes * row_count);
    if (c->planes == NULL || c->rows == NULL) {
        set_failure(c, CLIBPNG_ERR_MEMORY, "out of memory for a %lux%lu image",
                    (unsigned long)width, (unsigned long)height);
        png_error(png, c->message);
    }

    float *r = c->planes, *g = c->planes + plane, *b = c->planes + 2 * plane;
    if (passes > 1) {
        memset(c->rows, 0, rowbytes * row_count);
        for (int pass = 0; pass < passes; pass++) {
            for (png_uint_32 y = 0; y < height; y++) png_read_row(png, c->rows + (size_t)y * rowbytes, NULL);
        }
        for (png_uint_32 y = 0; y < height; y++) {
            size_t at = (size_t)y * width;
            convert_row(c->rows + (size_t)y * rowbytes, width, channels, depth, r + at, g + at, b + at);
        }
    } else {
        for (png_uint_32 y = 0; y < height; y++) {
            png_read_row(png, c->rows, NULL);
            size_t at = (size_t)y * width;
            convert_row(c->rows, width, channels, depth, r + at, g + at, b + at);
        }
    }
    // Reads up to IEND, so a file cut after the pixel data is still reported as truncated.
    png_read_end(png, NULL);

    *out_planes = c->planes;
    *out_width = width;
    *out_height = height;
    c->planes = NULL;
}

/// The setjmp frame for decoding; on a libpng error everything the context holds is freed.
static void decode(context *c, float **out_planes, uint32_t *out_width, uint32_t *out_height) {
    if (!check_signature(c)) return;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, on_png_error, on_png_warning);
    if (png == NULL) {
        set_failure(c, CLIBPNG_ERR_MEMORY, "cannot create a libpng read struct");
        return;
    }
    png_infop info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_read_struct(&png, NULL, NULL);
        set_failure(c, CLIBPNG_ERR_MEMORY, "cannot create a libpng info struct");
        return;
    }
    if (setjmp(png_jmpbuf(png)) == 0) {
        decode_with(c, png, info, out_planes, out_width, out_height);
    } else if (c->status == CLIBPNG_OK) {
        set_failure(c, CLIBPNG_ERR_FORMAT, "corrupt PNG data");
    }
    png_destroy_read_struct(&png, &info, NULL);
    free(c->rows);
    c->rows = NULL;
    free(c->planes);
    c->planes = NULL;
}

static void clear_outputs(float **out_planes, uint32_t *out_width, uint32_t *out_height) {
    *out_planes = NULL;
    *out_width = 0;
    *out_height = 0;
}

clibpng_status clibpng_decode_memory(const uint8_t *data, size_t size,
                                     float **out_planes, uint32_t *out_width, uint32_t *out_height,
                                     char *error, size_t error_size) {
    context c;
    context_init(&c);
    if (out_planes == NULL || out_width == NULL || out_height == NULL || (data == NULL && size > 0)) {
        set_failure(&c, CLIBPNG_ERR_ARGUMENT, "NULL argument");
        return finish(&c, error, error_size);
    }
    clear_outputs(out_planes, out_width, out_height);
    c.data = data;
    c.size = data == NULL ? 0 : size;
    decode(&c, out_planes, out_width, out_height);
    return finish(&c, error, error_size);
}

clibpng_status clibpng_decode_file(const char *path,
                                   float **out_planes, uint32_t *out_width, uint32_t *out_height,
                                   char *error, size_t error_size) {
    context c;
    context_init(&c);
    if (path == NULL || out_planes == NULL || out_width == NULL || out_height == NULL) {
        set_failure(&c, CLIBPNG_ERR_ARGUMENT, "NULL argument");
        return finish(&c, error, error_size);
    }
    clear_outputs(out_planes, out_width, out_height);
    c.file = fopen(path, "rb");
    if (c.file == NULL) {
        set_failure(&c, CLIBPNG_ERR_IO, "cannot open: %s", strerror(errno));
        return finish(&c, error, error_size);
    }
    decode(&c, out_planes, out_width, out_height);
    fclose(c.file);
    return finish(&c, error, error_size);
}

static void on_png_write(png_structp png, png_bytep bytes, size_t length) {
    context *c = (context *)png_get_io_ptr(png);
    if (length > SIZE_MAX - c->out_size) {
        set_failure(c, CLIBPNG_ERR_MEMORY, "encoded PNG too large");
        png_error(png, c->message);
    }
    size_t needed = c->out_size + length;
    if (needed > c->out_capacity) {
        size_t capacity = c->out_capacity < 4096 ? 4096 : c->out_capacity;
        while (capacity < needed) capacity = capacity > SIZE_MAX / 2 ? needed : capacity * 2;
        uint8_t *grown = (uint8_t *)realloc(c->out, capacity);
        if (grown == NULL) {
            set_failure(c, CLIBPNG_ERR_MEMORY, "out of memory while encoding a PNG");
            png_error(png, c->message);
        }
        c->out = grown;
        c->out_capacity = capacity;
    }
    memcpy(c->out + c->out_size, bytes, length);
    c->out_size = needed;
}

static void on_png_flush(png_structp png) { (void)png; }

/// The setjmp frame for encoding.
static void encode(context *c, const uint8_t *pixels, uint32_t width, uint32_t height, int bit_depth) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, on_png_error, on_png_warning);
    if (png == NULL) {
        set_failure(c, CLIBPNG_ERR_MEMORY, "cannot create a libpng write struct");
        return;
    }
    png_infop info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_write_struct(&png, NULL);
        set_failure(c, CLIBPNG_ERR_MEMORY, "cannot create a libpng info struct");
        return;
    }
    if (setjmp(png_jmpbuf(png)) == 0) {
        png_set_write_fn(png, c, on_png_write, on_png_flush);
        png_set_IHDR(png, info, width, height, bit_depth, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        size_t rowbytes = (size_t)width * 3 * (size_t)(bit_depth / 8);
        for (uint32_t y = 0; y < height; y++) png_write_row(png, pixels + (size_t)y * rowbytes);
        png_write_end(png, NULL);
    } else if (c->status == CLIBPNG_OK) {
        set_failure(c, CLIBPNG_ERR_FORMAT, "libpng could not encode the image");
    }
    png_destroy_write_struct(&png, &info);
}

clibpng_status clibpng_encode_rgb(const uint8_t *pixels, uint32_t width, uint32_t height, int bit_depth,
                                  uint8_t **out_data, size_t *out_size,
                                  char *error, size_t error_size) {
    context c;
    context_init(&c);
    if (pixels == NULL || out_data == NULL || out_size == NULL) {
        set_failure(&c, CLIBPNG_ERR_ARGUMENT, "NULL argument");
        return finish(&c, error, error_size);
    }
    *out_data = NULL;
    *out_size = 0;
    if (bit_depth != 8 && bit_depth != 16) {
        set_failure(&c, CLIBPNG_ERR_ARGUMENT, "bit depth %d is not supported (use 8 or 16)", bit_depth);
        return finish(&c, error, error_size);
    }
    if (width == 0 || height == 0) {
        set_failure(&c, CLIBPNG_ERR_ARGUMENT, "cannot encode an empty %ux%u image", width, height);
        return finish(&c, error, error_size);
    }
    if (width > CLIBPNG_MAX_SIDE || height > CLIBPNG_MAX_SIDE
        || (unsigned long long)width * (unsigned long long)height > CLIBPNG_MAX_PIXELS) {
        set_failure(&c, CLIBPNG_ERR_TOO_LARGE,
                    "image too large: %ux%u pixels (the limit is %u per side and %llu pixels in all)",
                    width, height, CLIBPNG_MAX_SIDE, CLIBPNG_MAX_PIXELS);
        return finish(&c, error, error_size);
    }
    encode(&c, pixels, width, height, bit_depth);
    if (c.status == CLIBPNG_OK) {
        *out_data = c.out;
        *out_size = c.out_size;
    } else {
        free(c.out);
    }
    return finish(&c, error, error_size);
}

void clibpng_free(void *pointer) { free(pointer); }
