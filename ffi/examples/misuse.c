/* misuse.c: uses libmedpatch wrongly on purpose, every way the header forbids, and checks that
 * each mistake gets its status and a message instead of a crash. Run under ASan/UBSan.
 *
 *   misuse IMAGE.png   (a good X-ray; the program makes its own bad inputs from it) */
#include <medpatch.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failures = 0;

static void expect(const char *what, medpatch_status got, medpatch_status want, const char *in_message) {
    ++checks;
    const char *message = medpatch_last_error();
    if (got != want || (in_message && !strstr(message, in_message))) {
        ++failures;
        fprintf(stderr, "FAIL %s: got %s (%s), want %s containing \"%s\"\n", what, medpatch_status_name(got), message,
                medpatch_status_name(want), in_message ? in_message : "");
    }
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*len);
    if (data && fread(data, 1, *len, f) != *len) { free(data); data = NULL; }
    fclose(f);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: misuse IMAGE.png\n"); return 2; }
    const medpatch_status OK = MEDPATCH_STATUS_OK, NUL = MEDPATCH_STATUS_NULL_ARGUMENT,
                          INVALID = MEDPATCH_STATUS_INVALID_ARGUMENT;
    medpatch_options *options = NULL;
    medpatch_engine *engine = NULL;
    medpatch_result *result = NULL;
    size_t n = 0;
    const float *data = NULL;
    const char *text = NULL;

    /* NULL for every pointer argument. */
    expect("options_new(NULL)", medpatch_options_new(NULL), NUL, "out is NULL");
    expect("set_provider(NULL options)", medpatch_options_set_provider(NULL, "tract"), NUL, "options is NULL");
    expect("options_new", medpatch_options_new(&options), OK, NULL);
    expect("set_provider(NULL name)", medpatch_options_set_provider(options, NULL), NUL, "provider is NULL");
    expect("set_model_path(NULL)", medpatch_options_set_model_path(options, NULL), NUL, "path is NULL");
    expect("set_model_bytes(NULL, 10)", medpatch_options_set_model_bytes(options, NULL, 10), NUL, "data is NULL");
    expect("set_ort_library(NULL)", medpatch_options_set_ort_library(options, NULL), NUL, "path is NULL");
    expect("set_tensorrt_cache(NULL)", medpatch_options_set_tensorrt_cache(options, NULL), NUL, "path is NULL");
    expect("engine_new(NULL options)", medpatch_engine_new(NULL, &engine), NUL, "options is NULL");
    expect("engine_new(NULL out)", medpatch_engine_new(options, NULL), NUL, "out is NULL");

    /* Bad values. */
    expect("unknown provider", medpatch_options_set_provider(options, "gpu"), INVALID, "unknown provider 'gpu'");
    expect("batch size 0", medpatch_options_set_batch_size(options, 0), INVALID, "at least 1");
    const char not_onnx[] = "this is not an ONNX model";
    expect("model bytes not ONNX", medpatch_options_set_model_bytes(options, (const uint8_t *)not_onnx, sizeof not_onnx),
           MEDPATCH_STATUS_MODEL, "<memory>");
    expect("model path missing", medpatch_options_set_model_path(options, "missing-model.onnx"), OK, NULL);
    expect("engine from a missing model", medpatch_engine_new(options, &engine), MEDPATCH_STATUS_MODEL,
           "missing-model.onnx");
    expect("default model", medpatch_options_set_default_model(options), OK, NULL);
    expect("provider tract", medpatch_options_set_provider(options, "tract"), OK, NULL);
    expect("threads 1", medpatch_options_set_threads(options, 1), OK, NULL);
    expect("engine_new", medpatch_engine_new(options, &engine), OK, NULL);
    medpatch_options_free(&options);
    medpatch_options_free(&options); /* second free through the same variable: no-op */
    medpatch_options_free(NULL);
    ++checks;
    if (options != NULL) { ++failures; fprintf(stderr, "FAIL options_free did not reset the pointer\n"); }

    /* Engine accessors. */
    expect("num_classes(NULL engine)", medpatch_engine_num_classes(NULL, &n), NUL, "engine is NULL");
    expect("num_classes(NULL out)", medpatch_engine_num_classes(engine, NULL), NUL, "out is NULL");
    expect("class_name(99)", medpatch_engine_class_name(engine, 99, &text), INVALID, "out of range");
    expect("skipped(5)", medpatch_engine_skipped(engine, 5, &text, &text), INVALID, "out of range");
    expect("provider(NULL out)", medpatch_engine_provider(engine, NULL), NUL, "out is NULL");

    /* Inputs. */
    expect("predict_file(NULL path)", medpatch_predict_file(engine, NULL, &result), NUL, "path is NULL");
    expect("predict_file(NULL engine)", medpatch_predict_file(NULL, argv[1], &result), NUL, "engine is NULL");
    expect("predict_file(NULL out)", medpatch_predict_file(engine, argv[1], NULL), NUL, "out is NULL");
    expect("missing file", medpatch_predict_file(engine, "no-such-xray.png", &result), MEDPATCH_STATUS_IO,
           "no-such-xray.png");
    const char not_utf8[] = {'x', 'r', (char)0xff, (char)0xfe, '.', 'p', 'n', 'g', 0};
    expect("non-UTF-8 path", medpatch_predict_file(engine, not_utf8, &result), MEDPATCH_STATUS_IO, "xr");
    const char garbage[] = "\x89PNG but not really a PNG";
    expect("garbage bytes", medpatch_predict_bytes(engine, (const uint8_t *)garbage, sizeof garbage, "garbage.png", &result),
           MEDPATCH_STATUS_DECODE, "garbage.png");
    expect("bytes NULL data", medpatch_predict_bytes(engine, NULL, 5, NULL, &result), NUL, "data is NULL");
    size_t len = 0;
    unsigned char *png = read_file(argv[1], &len);
    if (!png) { fprintf(stderr, "cannot read %s\n", argv[1]); return 2; }
    expect("truncated PNG", medpatch_predict_bytes(engine, png, len / 3, "truncated.png", &result), MEDPATCH_STATUS_DECODE,
           "truncated.png");
    float bad_pixels[4] = {0.0f, 0.5f, 2.0f, 1.0f};
    expect("pixels outside [0,1]", medpatch_predict_pixels(engine, bad_pixels, 2, 2, &result), INVALID, "outside [0, 1]");
    expect("pixels 0x0", medpatch_predict_pixels(engine, bad_pixels, 0, 0, &result), INVALID, "no pixels");
    expect("pixels NULL", medpatch_predict_pixels(engine, NULL, 2, 2, &result), NUL, "pixels is NULL");
    ++checks;
    if (result != NULL) { ++failures; fprintf(stderr, "FAIL a failed call wrote its output\n"); }

    /* A good prediction, then wrong buffers. */
    expect("good bytes", medpatch_predict_bytes(engine, png, len, "good.png", &result), OK, NULL);
    free(png);
    expect("probabilities(NULL len)", medpatch_result_probabilities(result, &data, NULL), NUL, "len is NULL");
    expect("probabilities", medpatch_result_probabilities(result, &data, &n), OK, NULL);
    size_t map_len = 0;
    expect("map_len", medpatch_engine_map_len(engine, &map_len), OK, NULL);
    float *map = malloc(map_len * sizeof(float));
    expect("saliency short buffer", medpatch_result_saliency(engine, result, MEDPATCH_MAP_KIND_RAW, map, map_len - 1),
           MEDPATCH_STATUS_BUFFER_SIZE, "needs exactly 3670016");
    expect("saliency NULL buffer", medpatch_result_saliency(engine, result, MEDPATCH_MAP_KIND_RAW, NULL, map_len), NUL,
           "out is NULL");
    expect("saliency bad kind", medpatch_result_saliency(engine, result, 7, map, map_len), INVALID, "map kind 7");
    expect("dense S=3", medpatch_result_dense_map(engine, result, 3, MEDPATCH_MAP_KIND_RAW, map, map_len), INVALID,
           "power of two");
    expect("saliency", medpatch_result_saliency(engine, result, MEDPATCH_MAP_KIND_SCALED, map, map_len), OK, NULL);
    free(map);

    /* Batches with bad items: one status per item. */
    const char *paths[3] = {argv[1], "no-such-xray.png", argv[1]};
    medpatch_result *results[3] = {NULL, NULL, NULL};
    medpatch_status statuses[3];
    expect("batch", medpatch_predict_files(engine, paths, 3, results, statuses), MEDPATCH_STATUS_IO, "[1] no-such-xray.png");
    ++checks;
    if (statuses[0] != OK || statuses[1] != MEDPATCH_STATUS_IO || statuses[2] != OK || !results[0] || results[1] || !results[2]) {
        ++failures;
        fprintf(stderr, "FAIL batch statuses\n");
    }
    for (int i = 0; i < 3; ++i) medpatch_result_free(&results[i]);
    expect("batch NULL statuses", medpatch_predict_files(engine, paths, 3, results, NULL), NUL, "statuses is NULL");

    /* A panic inside the library, then the engine still works. */
    expect("forced panic", medpatch_test_panic(), MEDPATCH_STATUS_PANIC, "medpatch_test_panic was called");
    medpatch_result_free(&result);
    expect("predict after the panic", medpatch_predict_file(engine, argv[1], &result), OK, NULL);

    /* The last error copied into a caller buffer. */
    medpatch_predict_file(engine, "no-such-xray.png", &result);
    char small[4], big[512];
    size_t needed = 0;
    expect("copy into a small buffer", medpatch_last_error_copy(small, sizeof small, &needed), MEDPATCH_STATUS_BUFFER_SIZE, NULL);
    expect("copy into a big buffer", medpatch_last_error_copy(big, sizeof big, &needed), OK, "no-such-xray.png");
    ++checks;
    if (needed != strlen(big) + 1) { ++failures; fprintf(stderr, "FAIL needed %zu\n", needed); }

    medpatch_result_free(&result);
    medpatch_result_free(&result);
    medpatch_engine_free(&engine);
    medpatch_engine_free(&engine);
    medpatch_engine_free(NULL);
    printf("{\"checks\": %d, \"failures\": %d}\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
