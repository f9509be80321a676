/* detect.c — which artifact does a PNG need removed? Prints the BIQA result of libautodir.
 *
 *     detect MODEL_DIR IN.png
 */
#include <math.h>
#include <stdio.h>
#include "autodir.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR IN.png\n", argv[0]);
        return 2;
    }
    autodir_engine *engine = NULL;
    autodir_image *image = NULL;
    int rc = 1;
    if (autodir_engine_create(argv[1], NULL, &engine) != AUTODIR_OK) goto fail;
    if (autodir_image_load_png(argv[2], &image) != AUTODIR_OK) goto fail;

    autodir_detection d;
    if (autodir_detect(engine, image, &d) != AUTODIR_OK) goto fail;
    printf("artifact: %s\n", d.artifact);
    float sum = 0;
    for (int i = 0; i < d.n_categories; i++) {
        printf("  %-16s %.4f\n", d.categories[i], d.probabilities[i]);
        sum += d.probabilities[i];
    }
    /* The result must be a distribution whose argmax is the reported artifact. */
    rc = (d.artifact_index >= 0 && d.artifact_index < d.n_categories && fabsf(sum - 1.0f) < 1e-3f) ? 0 : 1;
    if (rc) fprintf(stderr, "detect: inconsistent result (sum %g, index %d)\n", sum, d.artifact_index);
    goto done;
fail:
    fprintf(stderr, "detect: %s\n", autodir_last_error());
done:
    autodir_image_free(image);
    autodir_engine_destroy(engine);
    return rc;
}
