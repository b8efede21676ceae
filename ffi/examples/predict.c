/* predict.c: classify X-rays with libmedpatch from C, one JSON line per image on stdout.
 *
 *   predict [--provider NAME] [--ort-lib PATH] [--model FILE.onnx] IMAGE...
 *
 * Exit status: 0 all images succeeded, 1 some failed (each reported on stderr), 2 usage. */
#include <medpatch.h>

#include <stdio.h>
#include <string.h>

static int fail(const char *what, medpatch_status status) {
    fprintf(stderr, "predict: %s: %s: %s\n", what, medpatch_status_name(status), medpatch_last_error());
    return 1;
}

int main(int argc, char **argv) {
    medpatch_options *options = NULL;
    medpatch_engine *engine = NULL;
    medpatch_status status = medpatch_options_new(&options);
    int first_image = 1, failed = 0;
    if (status != MEDPATCH_STATUS_OK) return fail("options", status);
    for (; first_image + 1 < argc && strncmp(argv[first_image], "--", 2) == 0; first_image += 2) {
        const char *flag = argv[first_image], *value = argv[first_image + 1];
        if (strcmp(flag, "--provider") == 0) status = medpatch_options_set_provider(options, value);
        else if (strcmp(flag, "--ort-lib") == 0) status = medpatch_options_set_ort_library(options, value);
        else if (strcmp(flag, "--model") == 0) status = medpatch_options_set_model_path(options, value);
        else { fprintf(stderr, "predict: unknown option %s\n", flag); medpatch_options_free(&options); return 2; }
        if (status != MEDPATCH_STATUS_OK) { fail(flag, status); medpatch_options_free(&options); return 2; }
    }
    if (first_image >= argc) {
        fprintf(stderr, "usage: predict [--provider NAME] [--ort-lib PATH] [--model FILE] IMAGE...\n");
        medpatch_options_free(&options);
        return 2;
    }
    status = medpatch_engine_new(options, &engine);
    medpatch_options_free(&options); /* the engine keeps what it needs */
    if (status != MEDPATCH_STATUS_OK) return fail("engine", status);

    size_t classes = 0;
    const char *provider = NULL;
    medpatch_engine_num_classes(engine, &classes);
    medpatch_engine_provider(engine, &provider);
    for (int i = first_image; i < argc; ++i) {
        medpatch_result *result = NULL;
        const float *probabilities = NULL, *logits = NULL;
        size_t n = 0;
        status = medpatch_predict_file(engine, argv[i], &result);
        if (status != MEDPATCH_STATUS_OK) { failed |= fail(argv[i], status); continue; }
        medpatch_result_probabilities(result, &probabilities, &n);
        medpatch_result_logits(result, &logits, &n);
        printf("{\"input\": \"%s\", \"provider\": \"%s\", \"probabilities\": {", argv[i], provider);
        for (size_t c = 0; c < classes; ++c) {
            const char *name = NULL;
            medpatch_engine_class_name(engine, c, &name);
            printf("%s\"%s\": %.9g", c ? ", " : "", name, probabilities[c]);
        }
        printf("}, \"logits\": [");
        for (size_t c = 0; c < n; ++c) printf("%s%.9g", c ? ", " : "", logits[c]);
        printf("]}\n");
        medpatch_result_free(&result);
    }
    medpatch_engine_free(&engine);
    return failed;
}
