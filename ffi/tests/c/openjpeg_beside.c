/* openjpeg_beside.c: a host that links the system's OpenJPEG and libmedpatch together, as viewers
 * built on ITK, GDCM, DCMTK or OpenCV do. libmedpatch carries its own OpenJPEG (for JPEG 2000
 * DICOM) and must keep it to itself: were its opj_* symbols exported, one implementation would
 * serve both callers. This program uses the system OpenJPEG, then decodes a JPEG 2000 DICOM through
 * medpatch, and prints one JSON line with medpatch's logits.
 *
 *   openjpeg_beside FILE.dcm
 *
 * Exit status: 0 success, 1 a call failed (reported on stderr), 2 usage. */
#include <medpatch.h>
#include <openjpeg.h>

#include <stdio.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: openjpeg_beside FILE.dcm\n");
        return 2;
    }
    /* The system library, called first so that its symbols are bound in this process. */
    opj_codec_t *codec = opj_create_decompress(OPJ_CODEC_J2K);
    if (codec == NULL) {
        fprintf(stderr, "openjpeg_beside: the system OpenJPEG cannot create a decoder\n");
        return 1;
    }
    opj_destroy_codec(codec);

    medpatch_options *options = NULL;
    medpatch_engine *engine = NULL;
    medpatch_result *result = NULL;
    medpatch_status status = medpatch_options_new(&options);
    if (status == MEDPATCH_STATUS_OK) status = medpatch_options_set_provider(options, "tract");
    if (status == MEDPATCH_STATUS_OK) status = medpatch_engine_new(options, &engine);
    medpatch_options_free(&options);
    if (status == MEDPATCH_STATUS_OK) status = medpatch_predict_file(engine, argv[1], &result);
    if (status != MEDPATCH_STATUS_OK) {
        fprintf(stderr, "openjpeg_beside: %s: %s\n", medpatch_status_name(status), medpatch_last_error());
        medpatch_engine_free(&engine);
        return 1;
    }
    const float *logits = NULL;
    size_t n = 0;
    medpatch_result_logits(result, &logits, &n);
    printf("{\"system_openjpeg\": \"%s\", \"logits\": [", opj_version());
    for (size_t c = 0; c < n; ++c) printf("%s%.9g", c ? ", " : "", logits[c]);
    printf("]}\n");
    medpatch_result_free(&result);
    medpatch_engine_free(&engine);
    return 0;
}
