/* restore.c — restores a PNG with libautodir, printing progress.
 *
 *     restore MODEL_DIR IN.png OUT.png [--steps N] [--seed S] [--max-passes N] [--prompt TEXT]
 *                                      [--cfg-text X] [--cfg-image X] [--color-fix] [--sampler NAME]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autodir.h"

static bool on_progress(int pass, int max_passes, int step, int total_steps, const char *stage, void *user) {
    (void)user;
    fprintf(stderr, "\rpass %d/%d  %-8s step %d/%d   ", pass, max_passes, stage, step, total_steps);
    return true;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL_DIR IN.png OUT.png [--steps N] [--seed S] [--max-passes N] [--prompt TEXT]"
                        " [--cfg-text X] [--cfg-image X] [--color-fix] [--sampler NAME]\n", argv[0]);
        return 2;
    }
    autodir_restore_params params = autodir_restore_params_init();
    params.progress = on_progress;
    for (int i = 4; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--color-fix")) { params.color_fix = true; continue; }
        if (!v) { fprintf(stderr, "restore: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--steps")) params.steps = atoi(v);
        else if (!strcmp(a, "--seed")) params.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--max-passes")) params.max_passes = atoi(v);
        else if (!strcmp(a, "--prompt")) params.prompt = v;
        else if (!strcmp(a, "--cfg-text")) params.cfg_text = strtof(v, NULL);
        else if (!strcmp(a, "--cfg-image")) params.cfg_image = strtof(v, NULL);
        else if (!strcmp(a, "--sampler")) params.sampler = v;
        else { fprintf(stderr, "restore: unknown option %s\n", a); return 2; }
        i++;
    }

    autodir_engine *engine = NULL;
    autodir_image *in = NULL, *out = NULL;
    int rc = 1;
    if (autodir_engine_create(argv[1], NULL, &engine) != AUTODIR_OK) goto fail;
    if (autodir_image_load_png(argv[2], &in) != AUTODIR_OK) goto fail;
    if (autodir_restore(engine, in, &params, &out) != AUTODIR_OK) goto fail;
    fprintf(stderr, "\n");
    if (out->width != in->width || out->height != in->height || out->channels != 3) {
        fprintf(stderr, "restore: output is %dx%dx%d for a %dx%d input\n", out->width, out->height, out->channels,
                in->width, in->height);
        goto done;
    }
    if (autodir_image_save_png(out, argv[3], 8) != AUTODIR_OK) goto fail;
    printf("wrote %s (%dx%d)\n", argv[3], out->width, out->height);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "\nrestore: %s\n", autodir_last_error());
done:
    autodir_image_free(out);
    autodir_image_free(in);
    autodir_engine_destroy(engine);
    return rc;
}
