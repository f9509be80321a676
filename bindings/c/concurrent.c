/* concurrent.c — two restores at once on one engine from two threads must equal the same restores run
 * one after the other (the engine is immutable; each call owns its scratch and its seeded RNG).
 *
 *     concurrent MODEL_DIR IN.png [STEPS [THREADS]]
 *
 * THREADS = 1 (autodir_engine_params.n_threads): the results must be bit-identical. Otherwise (default
 * threads) they must agree within 1e-5: multithreaded OpenBLAS splits a GEMM differently when two calls
 * overlap, which changes the summation order in the last bits.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autodir.h"

typedef struct job {
    autodir_engine *engine;
    const autodir_image *in;
    autodir_restore_params params;
    autodir_image *out;
    autodir_status status;
    char error[512];
} job;

static void *run(void *arg) {
    job *j = arg;
    j->status = autodir_restore(j->engine, j->in, &j->params, &j->out);
    /* autodir_last_error() is per thread: read it on the thread that failed. */
    snprintf(j->error, sizeof j->error, "%s", autodir_last_error());
    return NULL;
}

static int same_shape(const autodir_image *a, const autodir_image *b) {
    return a && b && a->width == b->width && a->height == b->height && a->channels == b->channels;
}

static int same(const autodir_image *a, const autodir_image *b) {
    return same_shape(a, b) && memcmp(a->data, b->data, sizeof(float) * (size_t)a->width * a->height * a->channels) == 0;
}

static double max_abs_diff(const autodir_image *a, const autodir_image *b) {
    double m = 0;
    for (size_t i = 0, n = (size_t)a->width * a->height * a->channels; i < n; i++) {
        double d = fabs((double)a->data[i] - (double)b->data[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IN.png [STEPS [THREADS]]\n", argv[0]);
        return 2;
    }
    autodir_engine *engine = NULL;
    autodir_image *in = NULL;
    autodir_engine_params ep = autodir_engine_params_init();
    ep.n_threads = argc > 4 ? atoi(argv[4]) : 0;
    const int exact = ep.n_threads == 1;
    if (autodir_engine_create(argv[1], &ep, &engine) != AUTODIR_OK ||
        autodir_image_load_png(argv[2], &in) != AUTODIR_OK) {
        fprintf(stderr, "concurrent: %s\n", autodir_last_error());
        autodir_engine_destroy(engine);
        return 1;
    }
    job seq[2], par[2];
    for (int k = 0; k < 2; k++) {
        autodir_restore_params p = autodir_restore_params_init();
        p.steps = argc > 3 ? atoi(argv[3]) : 2;
        p.max_passes = 1;
        p.seed = 1234 + 77 * (uint64_t)k; /* different seeds, so that a mix-up between the calls shows */
        seq[k] = (job){.engine = engine, .in = in, .params = p};
        par[k] = seq[k];
    }
    run(&seq[0]);
    run(&seq[1]);
    pthread_t threads[2];
    for (int k = 0; k < 2; k++) pthread_create(&threads[k], NULL, run, &par[k]);
    for (int k = 0; k < 2; k++) pthread_join(threads[k], NULL);

    int rc = 0;
    for (int k = 0; k < 2; k++) {
        if (seq[k].status != AUTODIR_OK || par[k].status != AUTODIR_OK) {
            fprintf(stderr, "concurrent: restore %d failed: %s %s\n", k, seq[k].error, par[k].error);
            rc = 1;
        } else if (!same_shape(seq[k].out, par[k].out)) {
            fprintf(stderr, "concurrent: restore %d: the sequential and the concurrent run differ in shape\n", k);
            rc = 1;
        } else if (!same(seq[k].out, par[k].out)) {
            double d = max_abs_diff(seq[k].out, par[k].out);
            printf("concurrent: restore %d: max |sequential - concurrent| = %.3g\n", k, d);
            if (exact || !(d <= 1e-5)) {
                fprintf(stderr, "concurrent: restore %d differs between the sequential and the concurrent run (%s)\n", k,
                        exact ? "n_threads 1 must be bit-identical" : "above 1e-5");
                rc = 1;
            }
        }
    }
    if (rc == 0 && same(seq[0].out, seq[1].out)) fprintf(stderr, "concurrent: note: both seeds gave the same image\n");
    if (rc == 0) printf("concurrent: 2 concurrent restores equal the sequential ones (%s)\n",
                        exact ? "bit-identical, n_threads 1" : "within 1e-5");
    for (int k = 0; k < 2; k++) {
        autodir_image_free(seq[k].out);
        autodir_image_free(par[k].out);
    }
    autodir_image_free(in);
    autodir_engine_destroy(engine);
    return rc;
}
