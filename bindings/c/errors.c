/* errors.c — every bad-argument path of the C API returns the documented status and a message, sets
 * output pointers to NULL, and never crashes.
 *
 *     errors MODEL_DIR GOOD.png SCRATCH_DIR
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autodir.h"

static int failures = 0, checks = 0;

/* Checks that `got` is `want` and that a failure left a message. */
static void expect(const char *what, autodir_status got, autodir_status want) {
    checks++;
    const char *msg = autodir_last_error();
    int ok = got == want && msg != NULL && (want == AUTODIR_OK ? msg[0] == '\0' : msg[0] != '\0');
    if (!ok) {
        failures++;
        fprintf(stderr, "FAIL %s: got %s, want %s (message: \"%s\")\n", what, autodir_status_string(got),
                autodir_status_string(want), msg ? msg : "(null)");
    } else if (want != AUTODIR_OK) {
        printf("ok   %-44s %s: %s\n", what, autodir_status_string(got), msg);
    }
}

static void expect_true(const char *what, int condition) {
    checks++;
    if (!condition) {
        failures++;
        fprintf(stderr, "FAIL %s\n", what);
    }
}

static int write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t w = fwrite(bytes, 1, n, f);
    return fclose(f) == 0 && w == n;
}

static int truncated_copy(const char *from, const char *to, long keep) {
    FILE *f = fopen(from, "rb");
    if (!f) return 0;
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if ((long)n > keep) n = (size_t)keep;
    return write_bytes(to, buf, n);
}

/* A bad pointer value that the library must overwrite with NULL on failure, never dereference. */
#define POISON ((void *)(uintptr_t)0x1)

static bool stop_at_once(int pass, int max_passes, int step, int total, const char *stage, void *user) {
    (void)pass; (void)max_passes; (void)step; (void)total; (void)stage;
    ++*(int *)user;
    return false;
}

static bool cancel_from_callback(int pass, int max_passes, int step, int total, const char *stage, void *user) {
    (void)pass; (void)max_passes; (void)step; (void)total; (void)stage;
    autodir_cancel((autodir_cancel_token *)user);
    return true;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR GOOD.png SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    const char *model = argv[1], *good_png = argv[2], *scratch = argv[3];
    char path[4096];

    /* Version and status names. */
    expect_true("autodir_version() == AUTODIR_VERSION", autodir_version() == AUTODIR_VERSION);
    expect_true("autodir_version_string()", autodir_version_string() && autodir_version_string()[0] == '0' + AUTODIR_VERSION_MAJOR);
    expect_true("status_string(OK)", !strcmp(autodir_status_string(AUTODIR_OK), "AUTODIR_OK"));
    expect_true("status_string(99)", !strcmp(autodir_status_string((autodir_status)99), "unknown status"));

    /* Engine creation. */
    autodir_engine *engine = POISON;
    expect("engine_create(NULL dir)", autodir_engine_create(NULL, NULL, &engine), AUTODIR_ERR_INVALID_ARGUMENT);
    expect_true("engine_create(NULL dir) sets *out = NULL", engine == NULL);
    expect("engine_create(NULL out)", autodir_engine_create(model, NULL, NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    engine = POISON;
    expect("engine_create(missing folder)", autodir_engine_create("/nonexistent/autodir-model", NULL, &engine),
           AUTODIR_ERR_MODEL);
    expect_true("engine_create(missing folder) sets *out = NULL", engine == NULL);
    expect("engine_create(folder without model)", autodir_engine_create(scratch, NULL, &engine), AUTODIR_ERR_MODEL);
    autodir_engine_params ep = autodir_engine_params_init();
    ep.n_threads = -1;
    expect("engine_create(n_threads -1)", autodir_engine_create(model, &ep, &engine), AUTODIR_ERR_INVALID_ARGUMENT);
    ep = autodir_engine_params_init();
    ep.weight_type = 7;
    expect("engine_create(weight_type 7)", autodir_engine_create(model, &ep, &engine), AUTODIR_ERR_INVALID_ARGUMENT);
    expect_true("engine_create(weight_type 7) sets *out = NULL", engine == NULL);
    ep = autodir_engine_params_init();
    expect("engine_create(model)", autodir_engine_create(model, &ep, &engine), AUTODIR_OK);
    if (engine == NULL) {
        fprintf(stderr, "errors: cannot continue without an engine: %s\n", autodir_last_error());
        return 1;
    }

    /* PNG loading. */
    autodir_image *img = POISON;
    expect("image_load_png(NULL path)", autodir_image_load_png(NULL, &img), AUTODIR_ERR_INVALID_ARGUMENT);
    expect_true("image_load_png(NULL path) sets *out = NULL", img == NULL);
    expect("image_load_png(NULL out)", autodir_image_load_png(good_png, NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("image_load_png(missing file)", autodir_image_load_png("/nonexistent/x.png", &img), AUTODIR_ERR_IO);
    snprintf(path, sizeof path, "%s/not_png.png", scratch);
    expect_true("write not_png.png", write_bytes(path, "this is not a PNG file at all", 29));
    expect("image_load_png(not a PNG)", autodir_image_load_png(path, &img), AUTODIR_ERR_FORMAT);
    snprintf(path, sizeof path, "%s/truncated.png", scratch);
    expect_true("write truncated.png", truncated_copy(good_png, path, 60));
    expect("image_load_png(truncated PNG)", autodir_image_load_png(path, &img), AUTODIR_ERR_FORMAT);
    snprintf(path, sizeof path, "%s/empty.png", scratch);
    expect_true("write empty.png", write_bytes(path, "", 0));
    expect("image_load_png(empty file)", autodir_image_load_png(path, &img), AUTODIR_ERR_FORMAT);
    expect_true("failed loads leave *out = NULL", img == NULL);

    /* Image allocation: zero, negative, huge and overflowing sizes; channel counts. */
    const int bad_sizes[][3] = {
        {0, 8, 3}, {8, 0, 3}, {-1, 8, 3}, {8, -5, 3}, {INT_MAX, INT_MAX, 3}, {INT_MIN, 8, 3},
        {AUTODIR_MAX_SIDE + 1, 1, 3}, {30000, 30000, 3}, {65536, 65536, 4}, {8, 8, 0}, {8, 8, 2}, {8, 8, 5}, {8, 8, -3},
    };
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "image_create(%d, %d, %d)", bad_sizes[i][0], bad_sizes[i][1], bad_sizes[i][2]);
        img = POISON;
        expect(what, autodir_image_create(bad_sizes[i][0], bad_sizes[i][1], bad_sizes[i][2], &img),
               AUTODIR_ERR_INVALID_ARGUMENT);
        expect_true("image_create failure sets *out = NULL", img == NULL);
    }
    expect("image_create(NULL out)", autodir_image_create(8, 8, 3, NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    autodir_image_free(NULL);

    /* A good image to feed the other calls. */
    autodir_image *good = NULL;
    expect("image_load_png(good)", autodir_image_load_png(good_png, &good), AUTODIR_OK);
    if (!good) return 1;
    expect_true("loaded image has 3 channels", good->channels == 3 && good->data != NULL);

    /* PNG saving. */
    snprintf(path, sizeof path, "%s/saved.png", scratch);
    expect("image_save_png(NULL image)", autodir_image_save_png(NULL, path, 8), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("image_save_png(NULL path)", autodir_image_save_png(good, NULL, 8), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("image_save_png(bit depth 7)", autodir_image_save_png(good, path, 7), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("image_save_png(unwritable path)", autodir_image_save_png(good, "/nonexistent/dir/x.png", 8), AUTODIR_ERR_IO);
    expect("image_save_png(good, 16-bit)", autodir_image_save_png(good, path, 16), AUTODIR_OK);

    /* Caller-owned images with bad fields. */
    autodir_image bad = *good;
    autodir_detection det;
    expect("detect(NULL engine)", autodir_detect(NULL, good, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("detect(NULL image)", autodir_detect(engine, NULL, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("detect(NULL out)", autodir_detect(engine, good, NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    bad.data = NULL;
    expect("detect(image->data NULL)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.width = 0;
    expect("detect(width 0)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.height = -7;
    expect("detect(height -7)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.width = INT_MAX; bad.height = INT_MAX;
    expect("detect(INT_MAX x INT_MAX)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.channels = 2;
    expect("detect(2 channels)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.channels = 0;
    expect("detect(0 channels)", autodir_detect(engine, &bad, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    float saved = good->data[5];
    good->data[5] = NAN;
    expect("detect(NaN pixel)", autodir_detect(engine, good, &det), AUTODIR_ERR_INVALID_ARGUMENT);
    good->data[5] = INFINITY;
    expect("restore(infinite pixel)", autodir_restore(engine, good, NULL, &img), AUTODIR_ERR_INVALID_ARGUMENT);
    good->data[5] = saved;
    expect("detect(good)", autodir_detect(engine, good, &det), AUTODIR_OK);

    /* 1- and 4-channel inputs are accepted (gray replicated, alpha dropped) and give the RGB result. */
    autodir_image *gray = NULL, *rgba = NULL;
    expect("image_create(gray)", autodir_image_create(good->width, good->height, 1, &gray), AUTODIR_OK);
    expect("image_create(rgba)", autodir_image_create(good->width, good->height, 4, &rgba), AUTODIR_OK);
    if (gray && rgba) {
        size_t n = (size_t)good->width * good->height;
        for (size_t i = 0; i < n; i++) {
            gray->data[i] = good->data[3 * i];
            for (int c = 0; c < 3; c++) rgba->data[4 * i + c] = good->data[3 * i + c];
            rgba->data[4 * i + 3] = 0.25f;
        }
        autodir_detection d_rgba;
        expect("detect(1 channel)", autodir_detect(engine, gray, &det), AUTODIR_OK);
        expect("detect(4 channels)", autodir_detect(engine, rgba, &d_rgba), AUTODIR_OK);
        autodir_detection d_rgb;
        autodir_detect(engine, good, &d_rgb);
        expect_true("RGBA detection equals RGB detection",
                    !memcmp(d_rgb.probabilities, d_rgba.probabilities, sizeof d_rgb.probabilities));
    }
    autodir_image_free(gray);
    autodir_image_free(rgba);

    /* Restore: bad arguments and options. */
    autodir_restore_params p = autodir_restore_params_init();
    p.steps = 1;
    p.max_passes = 1;
    img = POISON;
    expect("restore(NULL engine)", autodir_restore(NULL, good, &p, &img), AUTODIR_ERR_INVALID_ARGUMENT);
    expect_true("restore failure sets *out = NULL", img == NULL);
    expect("restore(NULL image)", autodir_restore(engine, NULL, &p, &img), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("restore(NULL out)", autodir_restore(engine, good, &p, NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    bad = *good; bad.channels = 5;
    expect("restore(5 channels)", autodir_restore(engine, &bad, &p, &img), AUTODIR_ERR_INVALID_ARGUMENT);
    struct { const char *what; autodir_restore_params p; } bad_params[12];
    int nb = 0;
    for (int i = 0; i < 12; i++) bad_params[i].p = p;
    bad_params[nb].what = "restore(steps -1)"; bad_params[nb++].p.steps = -1;
    bad_params[nb].what = "restore(steps 1000000)"; bad_params[nb++].p.steps = 1000000;
    bad_params[nb].what = "restore(max_passes -2)"; bad_params[nb++].p.max_passes = -2;
    bad_params[nb].what = "restore(max_passes 1000)"; bad_params[nb++].p.max_passes = 1000;
    bad_params[nb].what = "restore(cfg_text NaN)"; bad_params[nb++].p.cfg_text = NAN;
    bad_params[nb].what = "restore(cfg_image inf)"; bad_params[nb++].p.cfg_image = INFINITY;
    bad_params[nb].what = "restore(sampler \"bogus\")"; bad_params[nb++].p.sampler = "bogus";
    bad_params[nb].what = "restore(prompt \"\")"; bad_params[nb++].p.prompt = "";
    for (int i = 0; i < nb; i++) {
        img = POISON;
        expect(bad_params[i].what, autodir_restore(engine, good, &bad_params[i].p, &img), AUTODIR_ERR_INVALID_ARGUMENT);
        expect_true("restore failure sets *out = NULL", img == NULL);
    }

    /* Cancellation: an already cancelled token, a callback returning false, autodir_cancel from the callback. */
    autodir_cancel_token *token = NULL;
    expect("cancel_token_create(NULL)", autodir_cancel_token_create(NULL), AUTODIR_ERR_INVALID_ARGUMENT);
    expect("cancel_token_create", autodir_cancel_token_create(&token), AUTODIR_OK);
    autodir_cancel(NULL);
    expect_true("NULL token is not cancelled", !autodir_cancel_token_is_cancelled(NULL));
    expect_true("new token is not cancelled", !autodir_cancel_token_is_cancelled(token));
    autodir_cancel(token);
    autodir_cancel(token);
    expect_true("cancelled token is cancelled", autodir_cancel_token_is_cancelled(token));
    autodir_restore_params pc = p;
    pc.cancel = token;
    expect("restore(cancelled token)", autodir_restore(engine, good, &pc, &img), AUTODIR_ERR_CANCELLED);
    autodir_cancel_token_destroy(token);
    autodir_cancel_token_destroy(NULL);

    int calls = 0;
    pc = p;
    pc.progress = stop_at_once;
    pc.progress_user_data = &calls;
    expect("restore(progress returns false)", autodir_restore(engine, good, &pc, &img), AUTODIR_ERR_CANCELLED);
    expect_true("progress was called exactly once before the cancel took effect", calls == 1);

    token = NULL;
    autodir_cancel_token_create(&token);
    pc = p;
    pc.steps = 3; /* the cancel takes effect at the next step, so leave steps after the first callback */
    pc.cancel = token;
    pc.progress = cancel_from_callback;
    pc.progress_user_data = token;
    expect("restore(autodir_cancel from the callback)", autodir_restore(engine, good, &pc, &img), AUTODIR_ERR_CANCELLED);
    expect_true("restore cancelled sets *out = NULL", img == NULL);
    autodir_cancel_token_destroy(token);

    /* The happy path still works on the same engine after all of that, and clears the last error. */
    expect("restore(good, 1 step)", autodir_restore(engine, good, &p, &img), AUTODIR_OK);
    expect_true("restored image has the input's size",
                img && img->width == good->width && img->height == good->height && img->channels == 3);
    autodir_image_free(img);

    autodir_image_free(good);
    autodir_engine_destroy(engine);
    autodir_engine_destroy(NULL);
    printf("errors: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
