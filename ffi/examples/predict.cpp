// predict.cpp: classify X-rays with libmedpatch from C++ (medpatch.hpp), one JSON line per image,
// plus the strongest patch of each finding above 0.5 from the saliency map.
//
//   predict_cpp [--provider NAME] [--ort-lib PATH] IMAGE...
#include <medpatch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>

int main(int argc, char** argv) {
    try {
        medpatch::Options options;
        int first = 1;
        for (; first + 1 < argc && std::strncmp(argv[first], "--", 2) == 0; first += 2) {
            if (std::strcmp(argv[first], "--provider") == 0) options.provider(argv[first + 1]);
            else if (std::strcmp(argv[first], "--ort-lib") == 0) options.ort_library(argv[first + 1]);
            else { std::cerr << "unknown option " << argv[first] << "\n"; return 2; }
        }
        const medpatch::Engine engine(options);
        const auto classes = engine.classes();
        int failed = 0;
        for (int i = first; i < argc; ++i) {
            try {
                const medpatch::Result result = engine.predict_file(argv[i]);
                const auto probabilities = result.probabilities();
                const auto logits = result.logits();
                const auto map = engine.saliency(result, medpatch::MapKind::Raw);
                const std::size_t plane = engine.image_size() * engine.image_size();
                std::printf("{\"input\": \"%s\", \"provider\": \"%s\", \"probabilities\": {", argv[i],
                            result.provider().c_str());
                for (std::size_t c = 0; c < classes.size(); ++c)
                    std::printf("%s\"%s\": %.9g", c ? ", " : "", classes[c].c_str(), probabilities[c]);
                std::printf("}, \"logits\": [");
                for (std::size_t c = 0; c < logits.size; ++c) std::printf("%s%.9g", c ? ", " : "", logits[c]);
                std::printf("], \"strongest_pixel\": [");
                for (std::size_t c = 0; c < classes.size(); ++c) {
                    const float* begin = map.data() + c * plane;
                    std::printf("%s%td", c ? ", " : "", std::max_element(begin, begin + plane) - begin);
                }
                std::printf("]}\n");
            } catch (const medpatch::Error& e) {
                std::cerr << "predict_cpp: " << e.status_name() << ": " << e.what() << "\n";
                failed = 1;
            }
        }
        return failed;
    } catch (const medpatch::Error& e) {
        std::cerr << "predict_cpp: " << e.status_name() << ": " << e.what() << "\n";
        return 1;
    }
}
