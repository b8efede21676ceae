// medpatch.hpp: a header-only C++17 wrapper over libmedpatch's C API (medpatch.h).
//
// Move-only RAII types (Options, Engine, Result); every failing call throws medpatch::Error,
// which carries the status and the message. Nothing leaks on any path: each handle is released
// by its destructor. The threading rules are the C API's: one Engine may be used from any
// number of threads at once; a Result is immutable; Options is for one thread at a time.
#ifndef MEDPATCH_HPP
#define MEDPATCH_HPP

#include "medpatch.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace medpatch {

/// A failed call: what() is the library's message, status() its medpatch_status.
class Error : public std::runtime_error {
public:
    Error(medpatch_status status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    medpatch_status status() const noexcept { return status_; }
    /// The status's name, e.g. "MEDPATCH_STATUS_DECODE".
    const char* status_name() const noexcept { return medpatch_status_name(static_cast<int32_t>(status_)); }

private:
    medpatch_status status_;
};

namespace detail {
inline void check(medpatch_status status) {
    if (status != MEDPATCH_STATUS_OK) {
        throw Error(status, medpatch_last_error());
    }
}

/// Owns one C handle; `Free` is the C free function taking the handle's address.
template <typename T, void (*Free)(T**)>
class Handle {
public:
    Handle() noexcept = default;
    explicit Handle(T* raw) noexcept : raw_(raw) {}
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
    Handle& operator=(Handle&& other) noexcept {
        if (this != &other) {
            Free(&raw_);
            raw_ = std::exchange(other.raw_, nullptr);
        }
        return *this;
    }
    ~Handle() { Free(&raw_); }
    T* get() const noexcept { return raw_; }

private:
    T* raw_ = nullptr;
};
}  // namespace detail

/// A read-only view of an array owned by a Result (valid while the Result lives).
template <typename T>
struct View {
    const T* data = nullptr;
    std::size_t size = 0;
    const T* begin() const noexcept { return data; }
    const T* end() const noexcept { return data + size; }
    const T& operator[](std::size_t i) const noexcept { return data[i]; }
    std::vector<T> to_vector() const { return std::vector<T>(begin(), end()); }
};

enum class MapKind : uint32_t { Raw = MEDPATCH_MAP_KIND_RAW, Scaled = MEDPATCH_MAP_KIND_SCALED };

/// The library's version string ("MAJOR.MINOR.PATCH").
inline std::string version() { return medpatch_version(); }

class Options {
public:
    Options() {
        medpatch_options* raw = nullptr;
        detail::check(medpatch_options_new(&raw));
        handle_ = Handle(raw);
    }
    Options& model_path(const std::string& path) {
        detail::check(medpatch_options_set_model_path(handle_.get(), path.c_str()));
        return *this;
    }
    Options& model_bytes(const std::vector<uint8_t>& bytes) {
        detail::check(medpatch_options_set_model_bytes(handle_.get(), bytes.data(), bytes.size()));
        return *this;
    }
    /// "auto", "tensorrt", "cuda", "cpu" (ONNX Runtime) or "tract".
    Options& provider(const std::string& name) {
        detail::check(medpatch_options_set_provider(handle_.get(), name.c_str()));
        return *this;
    }
    Options& threads(std::size_t n) {
        detail::check(medpatch_options_set_threads(handle_.get(), n));
        return *this;
    }
    Options& batch_size(std::size_t patches) {
        detail::check(medpatch_options_set_batch_size(handle_.get(), patches));
        return *this;
    }
    Options& ort_library(const std::string& path) {
        detail::check(medpatch_options_set_ort_library(handle_.get(), path.c_str()));
        return *this;
    }
    /// "f32" (default), "bf16" (OpenVINO on CPUs with BF16) or "fp16" (TensorRT).
    Options& precision(const std::string& precision) {
        detail::check(medpatch_options_set_precision(handle_.get(), precision.c_str()));
        return *this;
    }
    /// At "bf16": the layers left in f32, comma-separated (default "stem,classifier").
    Options& keep_f32(const std::string& layers) {
        detail::check(medpatch_options_set_keep_f32(handle_.get(), layers.c_str()));
        return *this;
    }
    Options& openvino_library(const std::string& path) {
        detail::check(medpatch_options_set_openvino_library(handle_.get(), path.c_str()));
        return *this;
    }
    Options& tensorrt_cache(const std::string& dir) {
        detail::check(medpatch_options_set_tensorrt_cache(handle_.get(), dir.c_str()));
        return *this;
    }
    const medpatch_options* get() const noexcept { return handle_.get(); }

private:
    using Handle = detail::Handle<medpatch_options, medpatch_options_free>;
    Handle handle_;
};

class Engine;

/// One image's prediction.
class Result {
public:
    View<float> probabilities() const { return view(medpatch_result_probabilities); }
    View<float> logits() const { return view(medpatch_result_logits); }
    /// [grid][grid][classes], row-major.
    View<float> patch_logits() const { return view(medpatch_result_patch_logits); }
    /// The [size][size] image the model saw, values in [0, 1].
    View<float> image() const { return view(medpatch_result_image); }
    medpatch_timings timings() const {
        medpatch_timings t{};
        detail::check(medpatch_result_timings(handle_.get(), &t));
        return t;
    }
    std::string provider() const {
        const char* name = nullptr;
        detail::check(medpatch_result_provider(handle_.get(), &name));
        return name;
    }
    const medpatch_result* get() const noexcept { return handle_.get(); }

private:
    friend class Engine;
    explicit Result(medpatch_result* raw) noexcept : handle_(raw) {}
    using Accessor = medpatch_status (*)(const medpatch_result*, const float**, std::size_t*);
    View<float> view(Accessor accessor) const {
        View<float> v;
        detail::check(accessor(handle_.get(), &v.data, &v.size));
        return v;
    }
    detail::Handle<medpatch_result, medpatch_result_free> handle_;
};

/// A model on an execution provider; share one between threads.
class Engine {
public:
    explicit Engine(const Options& options = Options()) {
        medpatch_engine* raw = nullptr;
        detail::check(medpatch_engine_new(options.get(), &raw));
        handle_ = Handle(raw);
    }

    std::vector<std::string> classes() const {
        std::vector<std::string> names(size(medpatch_engine_num_classes));
        for (std::size_t i = 0; i < names.size(); ++i) {
            const char* name = nullptr;
            detail::check(medpatch_engine_class_name(handle_.get(), i, &name));
            names[i] = name;
        }
        return names;
    }
    std::size_t image_size() const { return size(medpatch_engine_image_size); }
    std::size_t patch_size() const { return size(medpatch_engine_patch_size); }
    std::size_t grid() const { return size(medpatch_engine_grid); }
    /// Floats of one [classes][size][size] map.
    std::size_t map_len() const { return size(medpatch_engine_map_len); }
    std::string provider() const {
        const char* name = nullptr;
        detail::check(medpatch_engine_provider(handle_.get(), &name));
        return name;
    }
    /// "f32", "bf16" or "fp16": what the backend really computes in.
    std::string precision() const {
        const char* name = nullptr;
        detail::check(medpatch_engine_precision(handle_.get(), &name));
        return name;
    }
    /// Providers `auto` skipped, with the reason for each.
    std::vector<std::pair<std::string, std::string>> skipped() const {
        std::vector<std::pair<std::string, std::string>> out(size(medpatch_engine_skipped_count));
        for (std::size_t i = 0; i < out.size(); ++i) {
            const char* provider = nullptr;
            const char* reason = nullptr;
            detail::check(medpatch_engine_skipped(handle_.get(), i, &provider, &reason));
            out[i] = {provider, reason};
        }
        return out;
    }
    bool is_default_model() const {
        bool yes = false;
        detail::check(medpatch_engine_is_default_model(handle_.get(), &yes));
        return yes;
    }

    Result predict_file(const std::string& path) const {
        medpatch_result* raw = nullptr;
        detail::check(medpatch_predict_file(handle_.get(), path.c_str(), &raw));
        return Result(raw);
    }
    Result predict_bytes(const std::vector<uint8_t>& bytes, const std::string& name = "<memory>") const {
        medpatch_result* raw = nullptr;
        detail::check(medpatch_predict_bytes(handle_.get(), bytes.data(), bytes.size(), name.c_str(), &raw));
        return Result(raw);
    }
    /// Grayscale pixels in [0, 1], row-major, any size.
    Result predict_pixels(const std::vector<float>& pixels, std::size_t width, std::size_t height) const {
        if (pixels.size() != width * height) {
            throw Error(MEDPATCH_STATUS_INVALID_ARGUMENT, "pixels.size() is not width * height");
        }
        medpatch_result* raw = nullptr;
        detail::check(medpatch_predict_pixels(handle_.get(), pixels.data(), width, height, &raw));
        return Result(raw);
    }

    /// [classes][size][size] raw or scaled saliency at the model's input resolution.
    std::vector<float> saliency(const Result& result, MapKind kind = MapKind::Raw) const {
        std::vector<float> map(map_len());
        detail::check(medpatch_result_saliency(handle_.get(), result.get(), static_cast<uint32_t>(kind), map.data(),
                                               map.size()));
        return map;
    }
    /// The paper's dense shift-averaged map (S² forward passes).
    std::vector<float> dense_map(const Result& result, std::size_t shift_steps, MapKind kind = MapKind::Raw) const {
        std::vector<float> map(map_len());
        detail::check(medpatch_result_dense_map(handle_.get(), result.get(), shift_steps, static_cast<uint32_t>(kind),
                                                map.data(), map.size()));
        return map;
    }
    const medpatch_engine* get() const noexcept { return handle_.get(); }

private:
    using Handle = detail::Handle<medpatch_engine, medpatch_engine_free>;
    using SizeGetter = medpatch_status (*)(const medpatch_engine*, std::size_t*);
    std::size_t size(SizeGetter getter) const {
        std::size_t n = 0;
        detail::check(getter(handle_.get(), &n));
        return n;
    }
    Handle handle_;
};

}  // namespace medpatch

#endif  // MEDPATCH_HPP
