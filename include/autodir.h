/*
 * autodir.h — the C API of libautodir: AutoDIR all-in-one image restoration on the CPU.
 *
 * This header is the only C API. The library is built by `swift build [-c release]` as
 * .build/<configuration>/libautodir.so (product "autodir", target Sources/CAPI).
 *
 *     autodir_engine *engine;
 *     if (autodir_engine_create("models/autodir-tiny", NULL, &engine) != AUTODIR_OK) {
 *         fprintf(stderr, "%s\n", autodir_last_error());
 *         return 1;
 *     }
 *     autodir_image *in, *out;
 *     autodir_restore_params params = autodir_restore_params_init();
 *     if (autodir_image_load_png("in.png", &in) == AUTODIR_OK &&
 *         autodir_restore(engine, in, &params, &out) == AUTODIR_OK) {
 *         autodir_image_save_png(out, "out.png", 8);
 *         autodir_image_free(out);
 *     }
 *     autodir_image_free(in);
 *     autodir_engine_destroy(engine);
 *
 * CONVENTIONS
 *   - Every symbol is prefixed `autodir_`. Opaque handles come in create/destroy pairs; parameter
 *     structs are filled with defaults by `*_params_init()` and then edited field by field (always start
 *     from `*_params_init()`, so that fields added in later minor versions get their defaults).
 *   - Every function that can fail returns an `autodir_status`; AUTODIR_OK is 0. On failure,
 *     `autodir_last_error()` gives a message (thread-local) and every output pointer is set to NULL.
 *   - No Swift error, trap or unwinding crosses this boundary for bad arguments: NULL pointers, zero,
 *     negative or too-large sizes, unsupported channel counts, missing model folders and corrupt PNG
 *     files all return an error status. (As in any C library, a pointer that is not NULL but points to
 *     too little or freed memory cannot be detected.) Running out of memory inside the engine's
 *     model code terminates the process, as it does in Swift; image buffers that this API allocates
 *     itself report AUTODIR_ERR_OUT_OF_MEMORY.
 *
 * IMAGES
 *   `autodir_image` is interleaved HWC float32 in [0, 1] (row-major: data[(y * width + x) * channels + c]),
 *   RGB. Images the library returns always have channels == 3; they belong to the library and are
 *   freed with autodir_image_free(). Images the caller passes in belong to the caller and are only
 *   read during the call; they may have 1 (gray, replicated to RGB), 3 (RGB) or 4 (RGBA, alpha dropped)
 *   channels. Input values are clamped to [0, 1]; NaN or infinite values are an invalid argument.
 *   Width and height must be 1…AUTODIR_MAX_SIDE and width·height at most AUTODIR_MAX_PIXELS (the
 *   limits of the PNG reader), checked without integer overflow; detect and restore accept at most 16384
 *   pixels per side.
 *
 * THREAD SAFETY
 *   - One engine may serve any number of concurrent autodir_detect()/autodir_restore() calls from
 *     different threads: the pipeline is immutable after autodir_engine_create() (weights are
 *     read-only) and each call owns its scratch memory, its random generator (seeded per call) and its
 *     progress callback. The same seed gives the same output whether calls run alone or concurrently:
 *     bit-identical with n_threads = 1; with several threads, overlapping calls may differ in the last
 *     bits (max 1e-6 measured on the tiny model), because multithreaded OpenBLAS splits a GEMM
 *     differently when two calls overlap.
 *   - autodir_engine_destroy() must not run while another call is using the same engine.
 *   - autodir_cancel() may be called from any thread at any time while the token is alive, including
 *     from inside a progress callback. A token may be shared by several requests.
 *   - Different images may be loaded, saved and freed concurrently; one image must not be freed while
 *     another thread reads it.
 *   - autodir_last_error() is per thread. The progress callback runs on the thread that called
 *     autodir_restore().
 *   - The engine parallelises each call internally (OpenBLAS threads + Dispatch); when serving many
 *     concurrent calls, lower `n_threads` in autodir_engine_params.
 *
 * RUNTIME DEPENDENCIES of libautodir.so (`ldd libautodir.so`)
 *   The Swift runtime, Foundation (with its ICU data) and libdispatch are linked in statically
 *   (Package.swift: -static-stdlib on the CAPI target), so no Swift toolchain is needed at run time;
 *   a version script keeps the runtime's symbols local. What remains are Debian/Ubuntu system libraries:
 *       libopenblas.so.0 (libopenblas0; pulls libgfortran.so.5 and libquadmath.so.0),
 *       libpng16.so.16 (libpng16-16; pulls libz.so.1), libstdc++.so.6, libgcc_s.so.1, libm.so.6, libc.so.6.
 *   bindings/c/run_tests.sh verifies this: it runs a C example against a copy of the library with no
 *   LD_LIBRARY_PATH and the toolchain folder hidden. The library is large (about 70 MB in a debug build)
 *   because of ICU's data. Do not load it into a process that already runs another copy of the Swift
 *   runtime (a Swift program should link the Engine module instead).
 */
#ifndef AUTODIR_H
#define AUTODIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Version                                                                                         */

#define AUTODIR_VERSION_MAJOR 0
#define AUTODIR_VERSION_MINOR 2
#define AUTODIR_VERSION_PATCH 0
/* major * 10000 + minor * 100 + patch, as returned by autodir_version(). */
#define AUTODIR_VERSION (AUTODIR_VERSION_MAJOR * 10000 + AUTODIR_VERSION_MINOR * 100 + AUTODIR_VERSION_PATCH)

/* The version of the loaded library (major * 10000 + minor * 100 + patch); compare with AUTODIR_VERSION. */
int autodir_version(void);

/* The version of the loaded library as "MAJOR.MINOR.PATCH"; a static string, never freed. */
const char *autodir_version_string(void);

/* ---------------------------------------------------------------------------------------------- */
/* Status and errors                                                                               */

typedef enum autodir_status {
    AUTODIR_OK = 0,
    AUTODIR_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad size, channel count, option value, ...      */
    AUTODIR_ERR_IO = 2,               /* a file cannot be opened, read or written                       */
    AUTODIR_ERR_FORMAT = 3,           /* a file is not a valid PNG (or the data is not what it claims)  */
    AUTODIR_ERR_MODEL = 4,            /* the model folder is missing, incomplete or inconsistent        */
    AUTODIR_ERR_CANCELLED = 5,        /* autodir_cancel() or a progress callback returning false        */
    AUTODIR_ERR_OUT_OF_MEMORY = 6,    /* an image buffer this API allocates could not be allocated     */
    AUTODIR_ERR_INTERNAL = 7          /* anything else; the message says what                          */
} autodir_status;

/* A static, human-readable name of a status ("AUTODIR_ERR_IO", ...); "unknown status" otherwise. */
const char *autodir_status_string(autodir_status status);

/* The message of the most recent failed call on the calling thread, or "" when the most recent
 * status-returning call on this thread succeeded. Owned by the library; valid until the next autodir_
 * call on the same thread. Never NULL. */
const char *autodir_last_error(void);

/* ---------------------------------------------------------------------------------------------- */
/* Images                                                                                          */

/* The largest accepted width or height, and the largest accepted width * height. */
#define AUTODIR_MAX_SIDE 32768
#define AUTODIR_MAX_PIXELS (1 << 28)

/* An image: interleaved HWC float32 in [0, 1] (see IMAGES above). */
typedef struct autodir_image {
    int width;
    int height;
    int channels;   /* 3 for every image the library returns; 1, 3 or 4 accepted as input */
    float *data;    /* width * height * channels floats */
} autodir_image;

/* Allocates a library-owned width x height x channels image filled with zeros (channels 1, 3 or 4);
 * free it with autodir_image_free(). */
autodir_status autodir_image_create(int width, int height, int channels, autodir_image **out);

/* Frees an image returned by this library (struct and pixels together). NULL is ignored. Never pass an
 * autodir_image that the caller allocated. */
void autodir_image_free(autodir_image *image);

/* Reads a PNG file (any colour type and bit depth; gray is replicated, alpha dropped; no gamma or ICC
 * conversion) into a new library-owned RGB image (channels == 3).
 * Errors: INVALID_ARGUMENT (NULL), IO (cannot open/read), FORMAT (not a PNG, corrupt, too large). */
autodir_status autodir_image_load_png(const char *path, autodir_image **out);

/* Writes `image` (1, 3 or 4 channels; written as RGB) to `path` as an 8- or 16-bit PNG (`bit_depth`);
 * values are clamped to [0, 1] and rounded. Errors: INVALID_ARGUMENT (NULL, bad size/channels/bit depth),
 * IO (cannot write; a partial file is removed). */
autodir_status autodir_image_save_png(const autodir_image *image, const char *path, int bit_depth);

/* ---------------------------------------------------------------------------------------------- */
/* Engine                                                                                          */

/* An AutoDIR pipeline loaded from a model folder (BIQA + latent-diffusion restorer + SCM). Opaque. */
typedef struct autodir_engine autodir_engine;

/* How the engine keeps convolution and linear weights in memory. */
typedef enum autodir_weight_type {
    AUTODIR_WEIGHTS_F32 = 0,  /* float32: the fastest (default)                                         */
    AUTODIR_WEIGHTS_F16 = 1,  /* IEEE half: half the memory, widened per layer (F16 files stay mapped)   */
    AUTODIR_WEIGHTS_BF16 = 2, /* bfloat16: half the memory, widened per layer (BF16 files stay mapped)   */
} autodir_weight_type;

typedef struct autodir_engine_params {
    /* Threads for the engine's kernels (OpenBLAS and the element-wise kernels); 0 = leave the current
     * setting (all cores unless changed). The setting is process-wide: the most recent engine created
     * with n_threads > 0 sets it. */
    int n_threads;
    /* autodir_weight_type: how weights stay in memory (default AUTODIR_WEIGHTS_F32). */
    int weight_type;
} autodir_engine_params;

/* Default engine parameters. */
autodir_engine_params autodir_engine_params_init(void);

/* Loads the model folder `model_dir` (model_index.json, unet/, vae/, clip/, tokenizer/, scm/,
 * scheduler/; see docs) into a new engine. `params` may be NULL for the defaults.
 * Errors: INVALID_ARGUMENT (NULL model_dir/out, negative n_threads), MODEL (the folder or one of its files is
 * missing, unreadable or inconsistent — the message names the file or tensor). */
autodir_status autodir_engine_create(const char *model_dir, const autodir_engine_params *params,
                                     autodir_engine **out);

/* Frees an engine. NULL is ignored. No other call may be using the engine. */
void autodir_engine_destroy(autodir_engine *engine);

/* ---------------------------------------------------------------------------------------------- */
/* Detection (BIQA: which artifact does the image need removed?)                                   */

#define AUTODIR_MAX_CATEGORIES 16
#define AUTODIR_MAX_NAME 64 /* bytes, including the terminating NUL */

/* The result of autodir_detect(): caller-owned, fixed-size, nothing to free. */
typedef struct autodir_detection {
    char artifact[AUTODIR_MAX_NAME];                            /* the most probable category, e.g. "noise" */
    int artifact_index;                                         /* its index in `categories`             */
    int n_categories;                                           /* the model's categories, in order      */
    char categories[AUTODIR_MAX_CATEGORIES][AUTODIR_MAX_NAME];  /* NUL-terminated UTF-8 names            */
    float probabilities[AUTODIR_MAX_CATEGORIES];                /* softmax over the categories; sum 1    */
} autodir_detection;

/* Runs BIQA on `image` and fills `*out`. The last category, "no", means nothing is left to restore.
 * Errors: INVALID_ARGUMENT (NULL, bad size/channels/values), MODEL (the model has more than
 * AUTODIR_MAX_CATEGORIES categories or a name of AUTODIR_MAX_NAME bytes or more), INTERNAL. */
autodir_status autodir_detect(autodir_engine *engine, const autodir_image *image, autodir_detection *out);

/* ---------------------------------------------------------------------------------------------- */
/* Cancellation                                                                                    */

/* A thread-safe cancellation flag. Pass it in autodir_restore_params.cancel; autodir_cancel() makes every
 * restore using it stop at its next step with AUTODIR_ERR_CANCELLED (and a restore started with an
 * already cancelled token fails at once). A cancelled token stays cancelled. */
typedef struct autodir_cancel_token autodir_cancel_token;

autodir_status autodir_cancel_token_create(autodir_cancel_token **out);

/* Requests cancellation. Any thread, any time while the token is alive; idempotent. NULL is ignored. */
void autodir_cancel(autodir_cancel_token *token);

/* Whether autodir_cancel() was called on the token (false for NULL). */
bool autodir_cancel_token_is_cancelled(const autodir_cancel_token *token);

/* Frees a token. NULL is ignored. No restore may still be using it. */
void autodir_cancel_token_destroy(autodir_cancel_token *token);

/* ---------------------------------------------------------------------------------------------- */
/* Restoration                                                                                     */

/* Progress of a restore, called on the restoring thread at each stage and sampler step.
 * pass: 1-based pass number; max_passes: the pass limit of this call; total_steps: sampler steps per pass;
 * step: 0 when "detect", "encode" or "denoise" begins, 1…total_steps after each sampler step ("denoise"),
 * total_steps at "decode" and "correct"; stage: "detect", "encode", "denoise", "decode" or "correct"
 * (the string is valid only during the call). Return false to cancel the restore
 * (it then returns AUTODIR_ERR_CANCELLED). The callback must not call autodir_engine_destroy() on the
 * engine; it may call autodir_cancel(). */
typedef bool (*autodir_progress_callback)(int pass, int max_passes, int step, int total_steps,
                                          const char *stage, void *user_data);

/* A CFG scale below 0 means "the model folder's default". */
#define AUTODIR_CFG_DEFAULT (-1.0f)

typedef struct autodir_restore_params {
    const char *prompt;   /* NULL: automatic (BIQA picks the artifact, multi-pass). Otherwise a user instruction
                             such as "A photo needs noise artifact reduction": exactly one pass. UTF-8. */
    int steps;            /* sampler steps per pass; 0 = model default; 1…10000 */
    uint64_t seed;        /* the same seed gives the same output; default 0 */
    float cfg_text;       /* text guidance scale; AUTODIR_CFG_DEFAULT = model default */
    float cfg_image;      /* image guidance scale; AUTODIR_CFG_DEFAULT = model default */
    int max_passes;       /* pass limit of automatic restoration; 0 = model default; 1…100 */
    bool color_fix;       /* AdaIN colour correction of the output against the input; default false */
    const char *sampler;  /* NULL = model default, or "euler_ancestral", "euler", "ddim", "dpmpp_2m" */
    autodir_progress_callback progress; /* may be NULL */
    void *progress_user_data;           /* passed to `progress` */
    autodir_cancel_token *cancel;       /* may be NULL; see autodir_cancel() */
} autodir_restore_params;

/* Default restore parameters (everything "model default", seed 0, no callback, no token). */
autodir_restore_params autodir_restore_params_init(void);

/* Restores `image` into a new library-owned RGB image of the same width and height (*out, free with
 * autodir_image_free()). `params` may be NULL for the defaults.
 * Errors: INVALID_ARGUMENT (NULL engine/image/out, bad size/channels/values, bad option), CANCELLED,
 * OUT_OF_MEMORY (the output buffer), INTERNAL. */
autodir_status autodir_restore(autodir_engine *engine, const autodir_image *image,
                               const autodir_restore_params *params, autodir_image **out);

#ifdef __cplusplus
}
#endif

#endif /* AUTODIR_H */
