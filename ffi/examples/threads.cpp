// threads.cpp: 8 threads share one medpatch::Engine; every thread predicts the same X-ray and
// gets the same numbers as the main thread did alone. Error messages stay per thread.
//
//   threads [--provider NAME] [--ort-lib PATH] IMAGE
#include <medpatch.hpp>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
    try {
        medpatch::Options options;
        int first = 1;
        for (; first + 1 < argc && std::strncmp(argv[first], "--", 2) == 0; first += 2) {
            if (std::strcmp(argv[first], "--provider") == 0) options.provider(argv[first + 1]);
            else if (std::strcmp(argv[first], "--ort-lib") == 0) options.ort_library(argv[first + 1]);
        }
        if (first >= argc) { std::cerr << "usage: threads [--provider NAME] [--ort-lib PATH] IMAGE\n"; return 2; }
        const std::string image = argv[first];
        const medpatch::Engine engine(options);
        const std::vector<float> alone = engine.predict_file(image).logits().to_vector();

        std::atomic<int> mismatches{0}, wrong_errors{0};
        std::vector<std::thread> pool;
        for (int t = 0; t < 8; ++t) {
            pool.emplace_back([&, t] {
                for (int round = 0; round < 3; ++round) {
                    if (engine.predict_file(image).logits().to_vector() != alone) ++mismatches;
                    // Each thread fails on its own missing file: it must see its own message.
                    const std::string missing = "missing-" + std::to_string(t) + ".png";
                    try {
                        engine.predict_file(missing);
                        ++wrong_errors;
                    } catch (const medpatch::Error& e) {
                        if (e.status() != MEDPATCH_STATUS_IO || std::string(e.what()).find(missing) == std::string::npos)
                            ++wrong_errors;
                    }
                }
            });
        }
        for (auto& thread : pool) thread.join();
        std::printf("{\"threads\": 8, \"provider\": \"%s\", \"mismatches\": %d, \"wrong_errors\": %d}\n",
                    engine.provider().c_str(), mismatches.load(), wrong_errors.load());
        return mismatches == 0 && wrong_errors == 0 ? 0 : 1;
    } catch (const medpatch::Error& e) {
        std::cerr << "threads: " << e.status_name() << ": " << e.what() << "\n";
        return 1;
    }
}
