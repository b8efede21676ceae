//! `medpatch serve` in-process on loopback: the Open Inference Protocol on both transports, answers
//! equal to the engine's (and so to `medpatch predict`'s), every kind of bad input answered with
//! the protocol's error, limits, authentication, TLS, batching, timeouts and disconnects.

mod common;

use common::*;
use medpatch_engine::decode::GrayImage;
use medpatch_engine::report::PredictionRecord;
use medpatch_engine::{Input, MapKind, Prediction};
use medpatch_serve::proto;
use medpatch_testkit::repo_root;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

fn bundled_png() -> Vec<u8> {
    std::fs::read(repo_root().join("assets/00001369_000.png")).unwrap()
}

fn reference(bytes: &[u8]) -> Prediction {
    engine().predict(Input::Bytes { bytes, name: "reference" }).unwrap()
}

/// An answer's probabilities, logits and patch logits equal the engine's own prediction(s) (the
/// same engine, the same per-image backend calls: the bound is far above what it needs).
fn assert_outputs_match(outputs: &[(String, Vec<i64>, Vec<f32>)], expected: &[&Prediction]) {
    let n = expected.len() as i64;
    let concat =
        |f: fn(&Prediction) -> &Vec<f32>| expected.iter().flat_map(|p| f(p).iter().copied()).collect::<Vec<_>>();
    for (name, shape, values) in outputs {
        let (want_shape, want) = match name.as_str() {
            "probabilities" => (vec![n, 14], concat(|p| &p.probabilities)),
            "logits" => (vec![n, 14], concat(|p| &p.logits)),
            "patch_logits" => (vec![n, 8, 8, 14], concat(|p| &p.patch_logits)),
            other => panic!("unexpected output {other}"),
        };
        assert_eq!(shape, &want_shape, "{name}");
        let diff = max_abs_diff(values, &want);
        assert!(diff <= 1e-6, "{name}: max |Δ| {diff}");
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {prefix} in:\n{text}"))
}

fn metrics(s: &TestServer) -> String {
    String::from_utf8(http(s.http, "GET", "/metrics", &[], b"").body).unwrap()
}

#[test]
fn health_metadata_and_readiness_on_both_transports() {
    let s = TestServer::start(config());
    assert_eq!(http(s.http, "GET", "/v2/health/live", &[], b"").status, 200);
    assert_eq!(http(s.http, "GET", "/v2/health/ready", &[], b"").status, 200);
    let server = http(s.http, "GET", "/v2", &[], b"").json();
    assert_eq!(server["name"], "medpatch");
    assert!(server["extensions"].as_array().unwrap().contains(&Value::from("binary_tensor_data")), "{server}");
    for path in ["/v2/models/medpatch", "/v2/models/medpatch/versions/1"] {
        let model = http(s.http, "GET", path, &[], b"").json();
        assert_eq!(model["name"], "medpatch");
        assert_eq!(model["versions"], serde_json::json!(["1"]));
        assert_eq!(model["inputs"][0]["name"], "image");
        let outputs: Vec<&str> =
            model["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
        assert_eq!(outputs, ["probabilities", "logits", "patch_logits", "overlays"]);
        assert_eq!(model["outputs"][2]["shape"], serde_json::json!([-1, 8, 8, 14]));
        let classes = model["properties"]["classes"].as_str().unwrap();
        assert_eq!(classes.split(',').count(), 14);
        assert!(classes.starts_with("No Finding,"), "{classes}");
    }
    assert_eq!(http(s.http, "GET", "/v2/models/medpatch/ready", &[], b"").status, 200);
    assert_eq!(http(s.http, "GET", "/v2/models/medpatch/config", &[], b"").json()["max_batch_size"], 8);
    let unknown = http(s.http, "GET", "/v2/models/chexnet", &[], b"");
    assert_eq!(unknown.status, 404);
    assert!(unknown.error().contains("unknown model 'chexnet'"), "{}", unknown.error());
    let version = http(s.http, "GET", "/v2/models/medpatch/versions/2/ready", &[], b"");
    assert_eq!(version.status, 404);
    assert!(version.error().contains("no version '2'"), "{}", version.error());

    s.runtime().block_on(async {
        let live: proto::ServerLiveResponse =
            grpc(s.grpc, "ServerLive", &proto::ServerLiveRequest {}, None).await.unwrap();
        assert!(live.live);
        let ready: proto::ServerReadyResponse =
            grpc(s.grpc, "ServerReady", &proto::ServerReadyRequest {}, None).await.unwrap();
        assert!(ready.ready);
        let meta: proto::ServerMetadataResponse =
            grpc(s.grpc, "ServerMetadata", &proto::ServerMetadataRequest {}, None).await.unwrap();
        assert_eq!(meta.name, "medpatch");
        let request = proto::ModelMetadataRequest { name: "medpatch".into(), version: String::new() };
        let model: proto::ModelMetadataResponse = grpc(s.grpc, "ModelMetadata", &request, None).await.unwrap();
        assert_eq!(model.outputs.len(), 4);
        assert_eq!(model.outputs[2].shape, [-1, 8, 8, 14]);
        assert_eq!(model.properties["grid"], "8");
        let request = proto::ModelReadyRequest { name: "medpatch".into(), version: "1".into() };
        let ready: proto::ModelReadyResponse = grpc(s.grpc, "ModelReady", &request, None).await.unwrap();
        assert!(ready.ready);
        let request = proto::ModelReadyRequest { name: "other".into(), version: String::new() };
        let (code, message) =
            grpc::<_, proto::ModelReadyResponse>(s.grpc, "ModelReady", &request, None).await.unwrap_err();
        assert_eq!(code, 5, "NOT_FOUND: {message}");
        assert!(message.contains("unknown model 'other'"), "{message}");
        // Triton's other methods are not served: UNIMPLEMENTED, which its clients understand.
        let (code, _, _) = grpc_raw(s.grpc, "RepositoryIndex", vec![0, 0, 0, 0, 0], None).await;
        assert_eq!(code, 12);
    });
}

#[test]
fn rest_infer_with_json_and_binary_tensors_equals_the_engine() {
    let s = TestServer::start(config());
    let png = bundled_png();
    let expected = reference(&png);

    // Encoded file as a binary BYTES tensor; outputs as JSON numbers (the protocol's default).
    let reply = infer_files(s.http, &[&png], r#","id":"req-7""#);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let header = reply.json();
    assert_eq!(header["id"], "req-7");
    assert_eq!(header["model_name"], "medpatch");
    assert!(header["parameters"]["classes"].as_str().unwrap().starts_with("No Finding,Enlarged"));
    assert!(header["outputs"][0]["data"].is_array());
    assert_outputs_match(&outputs_f32(&reply), &[&expected]);

    // The same, all outputs as binary data (what tritonclient asks for).
    let reply = infer_files(s.http, &[&png, &png], r#","parameters":{"binary_data_output":true}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/octet-stream"));
    assert!(reply.header("inference-header-content-length").is_some());
    assert_outputs_match(&outputs_f32(&reply), &[&expected, &expected]);

    // Pixels: UINT8 as JSON numbers, nested rows; scaled by 1/255 as the Python package does.
    let (w, h) = (40usize, 30usize);
    let u8s: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 256) as u8).collect();
    let image =
        GrayImage { width: w as u32, height: h as u32, pixels: u8s.iter().map(|&v| v as f32 / 255.0).collect() };
    let expected_pixels = engine().predict(Input::Image(&image)).unwrap();
    let rows: Vec<Vec<u8>> = u8s.chunks(w).map(<[u8]>::to_vec).collect();
    let body = serde_json::json!({
        "inputs": [{ "name": "image", "datatype": "UINT8", "shape": [1, h, w], "data": [rows] }],
        "outputs": [{ "name": "logits" }, { "name": "probabilities", "parameters": { "binary_data": true } }],
    });
    let reply = http(
        s.http,
        "POST",
        "/v2/models/medpatch/infer",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let outputs = outputs_f32(&reply);
    assert_eq!(outputs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(), ["logits", "probabilities"]);
    assert_outputs_match(&outputs, &[&expected_pixels]);

    // FP32 and UINT16 pixels as binary tensors, two images in one request.
    for datatype in ["FP32", "UINT16"] {
        let raw: Vec<u8> = match datatype {
            "FP32" => image.pixels.iter().chain(&image.pixels).flat_map(|v| v.to_le_bytes()).collect(),
            _ => u8s.iter().chain(&u8s).flat_map(|&v| (v as u16 * 257).to_le_bytes()).collect(),
        };
        let json = format!(
            r#"{{"inputs":[{{"name":"image","datatype":"{datatype}","shape":[2,{h},{w}],"parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"patch_logits","parameters":{{"binary_data":true}}}}]}}"#,
            raw.len()
        );
        let mut body = json.clone().into_bytes();
        body.extend_from_slice(&raw);
        let reply = http(
            s.http,
            "POST",
            "/v2/models/medpatch/versions/1/infer",
            &[("Inference-Header-Content-Length", &json.len().to_string())],
            &body,
        );
        assert_eq!(reply.status, 200, "{datatype}: {}", String::from_utf8_lossy(&reply.body));
        // u16 = u8 · 257, so v/65535 = u8/255 up to float rounding of the scale.
        let outputs = outputs_f32(&reply);
        let half = outputs[0].2.len() / 2;
        assert_eq!(outputs[0].2[..half], outputs[0].2[half..], "{datatype}: both images alike");
        let diff = max_abs_diff(&outputs[0].2[..half], &expected_pixels.patch_logits);
        assert!(diff <= 1e-3, "{datatype}: max |Δ| {diff}");
        if datatype == "FP32" {
            assert!(diff <= 1e-6, "FP32 pixels are the engine's own: {diff}");
        }
    }
    // gzip-compressed request bodies (tritonclient's request_compression_algorithm).
    let (plain, n) = binary_files_request(&[&png], "");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let reply = http(
        s.http,
        "POST",
        "/v2/models/medpatch/infer",
        &[("Inference-Header-Content-Length", &n.to_string()), ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_outputs_match(&outputs_f32(&reply), &[&expected]);
}

#[test]
fn grpc_infer_with_raw_and_typed_contents_equals_the_engine() {
    let s = TestServer::start(config());
    let png = bundled_png();
    let expected = reference(&png);
    let tensor = |datatype: &str, shape: Vec<i64>, contents: Option<proto::InferTensorContents>| {
        proto::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    };
    let mut raw = (png.len() as u32).to_le_bytes().to_vec();
    raw.extend_from_slice(&png);
    let requests = [
        proto::ModelInferRequest {
            model_name: "medpatch".into(),
            id: "g1".into(),
            inputs: vec![tensor("BYTES", vec![1, 1], None)],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        },
        proto::ModelInferRequest {
            model_name: "medpatch".into(),
            inputs: vec![tensor(
                "BYTES",
                vec![1],
                Some(proto::InferTensorContents { bytes_contents: vec![png.clone().into()], ..Default::default() }),
            )],
            ..Default::default()
        },
    ];
    s.runtime().block_on(async {
        for (i, request) in requests.iter().enumerate() {
            let answer: proto::ModelInferResponse = grpc(s.grpc, "ModelInfer", request, None).await.unwrap();
            assert_eq!(answer.id, request.id);
            assert_eq!(answer.outputs.len(), 3, "request {i}");
            assert_eq!(answer.raw_output_contents.len(), 3);
            let outputs: Vec<_> = answer
                .outputs
                .iter()
                .zip(&answer.raw_output_contents)
                .map(|(o, raw)| (o.name.clone(), o.shape.clone(), f32s(raw)))
                .collect();
            assert_outputs_match(&outputs, &[&expected]);
            let Some(proto::infer_parameter::ParameterChoice::StringParam(provider)) =
                answer.parameters["provider"].parameter_choice.clone()
            else {
                panic!("no provider parameter")
            };
            assert_eq!(provider, engine().provider().to_string());
        }
        // UINT8 pixels as typed uint_contents, and FP32 as fp32_contents.
        let (w, h) = (24usize, 20usize);
        let u8s: Vec<u32> = (0..w * h).map(|i| (i * 11 % 256) as u32).collect();
        let image =
            GrayImage { width: w as u32, height: h as u32, pixels: u8s.iter().map(|&v| v as f32 / 255.0).collect() };
        let expected = engine().predict(Input::Image(&image)).unwrap();
        for contents in [
            proto::InferTensorContents { uint_contents: u8s.clone(), ..Default::default() },
            proto::InferTensorContents { fp32_contents: image.pixels.clone(), ..Default::default() },
        ] {
            let datatype = if contents.uint_contents.is_empty() { "FP32" } else { "UINT8" };
            let request = proto::ModelInferRequest {
                model_name: "medpatch".into(),
                inputs: vec![tensor(datatype, vec![1, h as i64, w as i64], Some(contents))],
                outputs: vec![proto::model_infer_request::InferRequestedOutputTensor {
                    name: "logits".into(),
                    parameters: Default::default(),
                }],
                ..Default::default()
            };
            let answer: proto::ModelInferResponse = grpc(s.grpc, "ModelInfer", &request, None).await.unwrap();
            assert_eq!(answer.outputs.len(), 1);
            let diff = max_abs_diff(&f32s(&answer.raw_output_contents[0]), &expected.logits);
            assert!(diff <= 1e-6, "{datatype}: {diff}");
        }
    });
}

#[test]
fn v1_predict_answers_the_record_medpatch_predict_prints() {
    let s = TestServer::start(config());
    let png = bundled_png();
    let reply = http(s.http, "POST", "/v1/predict?name=00001369_000.png", &[("Content-Type", "image/png")], &png);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let record = reply.json();
    let keys: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["input", "model", "provider", "precision", "probabilities", "logits", "timings_ms"]);
    assert_eq!(record["input"], "00001369_000.png");
    let engine = engine();
    let expected = reference(&png);
    let mut want = serde_json::to_value(PredictionRecord::new(&engine, &expected)).unwrap();
    for field in ["model", "provider", "precision", "probabilities", "logits"] {
        assert_eq!(record[field], want[field], "{field}");
    }
    // And the CLI itself, when its binary is built (scripts/test.sh builds it before the tests).
    let cli = std::env::var_os("MEDPATCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/medpatch"));
    if !cli.exists() {
        eprintln!("SKIPPED the CLI comparison: {} is not built", cli.display());
        return;
    }
    let provider = engine.provider().to_string();
    let out = std::process::Command::new(&cli)
        .args(["predict", "assets/00001369_000.png", "--provider", &provider, "--threads", "1"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    want = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["probabilities", "logits"] {
        for (class, value) in want[field].as_object().unwrap() {
            let served = record[field][class].as_f64().unwrap();
            assert!((served - value.as_f64().unwrap()).abs() <= 1e-6, "{field} {class}: {served} vs CLI {value}");
        }
    }
    assert_eq!(record["provider"], want["provider"]);
}

#[test]
fn overlays_are_the_engines_overlay_pngs() {
    let s = TestServer::start(config());
    let png = bundled_png();
    let expected = reference(&png);
    let pngs = engine().overlay_pngs(&expected, &[2, 9], MapKind::Scaled, None).unwrap();
    let extra =
        r#","parameters":{"overlay_classes":"cardiomegaly, Pneumothorax","map":"scaled","binary_data_output":true}"#;
    let reply = infer_files(s.http, &[&png], extra);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let (header, binary) = reply.split_binary();
    let overlays = header["outputs"].as_array().unwrap().iter().position(|o| o["name"] == "overlays").unwrap();
    assert_eq!(header["outputs"][overlays]["shape"], serde_json::json!([1, 2]));
    assert_eq!(header["parameters"]["overlay_classes"], "Cardiomegaly,Pneumothorax");
    let offset: u64 = header["outputs"].as_array().unwrap()[..overlays]
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
        .sum();
    let mut raw = &binary[offset as usize..];
    for want in &pngs {
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        assert_eq!(&raw[4..4 + len], &want[..]);
        raw = &raw[4 + len..];
    }
    assert!(raw.is_empty());
    // As JSON: base64 strings, marked so.
    let reply = infer_files(
        s.http,
        &[&png],
        r#","outputs":[{"name":"overlays"}],"parameters":{"overlay_classes":"Pneumothorax","map":"scaled"}"#,
    );
    assert_eq!(reply.status, 200);
    let header = reply.json();
    assert_eq!(header["outputs"][0]["parameters"]["content_type"], "base64");
    use base64::Engine as _;
    let decoded =
        base64::engine::general_purpose::STANDARD.decode(header["outputs"][0]["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(decoded, pngs[1]);
}

#[test]
fn bad_inputs_get_the_protocols_errors_and_the_server_keeps_serving() {
    let s = TestServer::start(config());
    let png = bundled_png();
    let json = |body: Value| body.to_string().into_bytes();
    let infer = "/v2/models/medpatch/infer";
    let bytes_input = |shape: Value, data: Value| {
        json(serde_json::json!({"inputs":[{"name":"image","datatype":"BYTES","shape":shape,"data":data}]}))
    };
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let file_input = |bytes: &[u8]| {
        json(
            serde_json::json!({"inputs":[{"name":"image","datatype":"BYTES","shape":[1],"data":[b64(bytes)],"parameters":{"content_type":"base64"}}]}),
        )
    };
    let truncated = &png[..png.len() / 3];
    // (method, path, headers, body, expected status, expected words in the error)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", infer, vec![], b"{".to_vec(), 400, "malformed inference request JSON"),
        ("POST", infer, vec![], b"[1,2]".to_vec(), 400, "malformed inference request JSON"),
        ("POST", "/v2/models/chexnet/infer", vec![], file_input(&png), 404, "unknown model 'chexnet'"),
        // Refusals of large bodies reach the client as answers, not as connection resets: the
        // server reads the body (within its limit) before it refuses.
        ("POST", "/v2/models/chexnet/infer", vec![], vec![b' '; 8 << 20], 404, "unknown model 'chexnet'"),
        ("POST", "/v2/models/medpatch/versions/3/infer", vec![], file_input(&png), 404, "no version '3'"),
        (
            "POST",
            infer,
            vec![],
            json(serde_json::json!({"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["a"]}]})),
            400,
            "the model has one input, 'image'",
        ),
        (
            "POST",
            infer,
            vec![],
            json(serde_json::json!({"inputs":[{"name":"image","datatype":"INT32","shape":[1,2,2],"data":[1,2,3,4]}]})),
            400,
            "cannot be INT32",
        ),
        (
            "POST",
            infer,
            vec![],
            json(serde_json::json!({"inputs":[{"name":"image","datatype":"UINT8","shape":[1,4,4],"data":[1,2,3]}]})),
            400,
            "has 3 values, its shape needs 16",
        ),
        (
            "POST",
            infer,
            vec![],
            json(serde_json::json!({"inputs":[{"name":"image","datatype":"UINT8","shape":[1,0,4],"data":[]}]})),
            400,
            "dimension 0 is not positive",
        ),
        (
            "POST",
            infer,
            vec![],
            json(
                serde_json::json!({"inputs":[{"name":"image","datatype":"UINT8","shape":[1,2,2],"data":[1,2,3,300]}]}),
            ),
            400,
            "300 is not a UINT8 value",
        ),
        (
            "POST",
            infer,
            vec![],
            bytes_input(serde_json::json!([1, 2, 3]), serde_json::json!(["a"])),
            400,
            "must have shape [N] or [N, 1]",
        ),
        (
            "POST",
            infer,
            vec![],
            bytes_input(serde_json::json!([9]), serde_json::json!(vec!["a"; 9])),
            400,
            "at most 8 per request",
        ),
        (
            "POST",
            infer,
            vec![],
            bytes_input(serde_json::json!([2]), serde_json::json!(["a"])),
            400,
            "has shape [2] but 1 BYTES elements",
        ),
        ("POST", infer, vec![], file_input(truncated), 422, "image[0]"),
        ("POST", infer, vec![], file_input(b"not an image at all"), 422, "unrecognised file format"),
        ("POST", infer, vec![], file_input(b""), 422, "image[0]"),
        (
            "POST",
            infer,
            vec![],
            json(
                serde_json::json!({"inputs":[{"name":"image","datatype":"FP32","shape":[1,2,2],"data":[0.5,0.5,0.5,2.0]}]}),
            ),
            422,
            "outside [0, 1]",
        ),
        (
            "POST",
            infer,
            vec![],
            json(
                serde_json::json!({"inputs":[{"name":"image","datatype":"FP32","shape":[1,2,2],"data":[0.5,0.5,0.5,0.5]}],"outputs":[{"name":"heatmap"}]}),
            ),
            400,
            "unknown output 'heatmap'",
        ),
        (
            "POST",
            infer,
            vec![],
            json(
                serde_json::json!({"inputs":[{"name":"image","datatype":"FP32","shape":[1,2,2],"data":[0.5,0.5,0.5,0.5]}],"outputs":[{"name":"overlays"}]}),
            ),
            400,
            "needs the 'overlay_classes' parameter",
        ),
        (
            "POST",
            infer,
            vec![],
            json(
                serde_json::json!({"parameters":{"overlay_classes":"Fractures"},"inputs":[{"name":"image","datatype":"FP32","shape":[1,2,2],"data":[0.5,0.5,0.5,0.5]}]}),
            ),
            400,
            "unknown class 'Fractures'",
        ),
        (
            "POST",
            infer,
            vec![],
            json(serde_json::json!({"parameters":{"map":3},"inputs":[]})),
            400,
            "parameter 'map' must be 'raw' or 'scaled'",
        ),
        (
            "POST",
            infer,
            vec![("Inference-Header-Content-Length", "many")],
            file_input(&png),
            400,
            "must be a number of bytes",
        ),
        (
            "POST",
            infer,
            vec![("Inference-Header-Content-Length", "10")],
            b"{}".to_vec(),
            400,
            "the body has only 2 bytes",
        ),
        (
            "POST",
            infer,
            vec![("Content-Type", "multipart/form-data; boundary=x")],
            file_input(&png),
            415,
            "not multipart/form-data",
        ),
        (
            "POST",
            infer,
            vec![("Content-Type", "multipart/form-data; boundary=x")],
            vec![b'x'; 8 << 20],
            415,
            "not multipart/form-data",
        ),
        ("POST", infer, vec![("Content-Encoding", "br")], file_input(&png), 415, "Content-Encoding 'br'"),
        ("POST", infer, vec![("Content-Encoding", "gzip")], b"not gzip".to_vec(), 400, "cannot be decompressed"),
        ("GET", infer, vec![], vec![], 405, "GET is not allowed"),
        ("GET", "/v3/whatever", vec![], vec![], 404, "no such endpoint: GET /v3/whatever"),
        (
            "POST",
            "/v1/predict",
            vec![("Content-Type", "application/json")],
            file_input(&png),
            415,
            "takes the image file itself",
        ),
        (
            "POST",
            "/v1/predict?name=notes.png",
            vec![],
            b"plain text".to_vec(),
            422,
            "notes.png: unrecognised file format",
        ),
        ("POST", "/v1/predict", vec![], truncated.to_vec(), 422, "request body"),
    ];
    for (method, path, headers, body, status, message) in &cases {
        let reply = http(s.http, method, path, headers, body);
        assert_eq!(reply.status, *status, "{method} {path}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("content-type"), Some("application/json"), "{method} {path}");
        let error = reply.error();
        assert!(error.contains(message), "{method} {path}: expected '{message}' in '{error}'");
    }

    s.runtime().block_on(async {
        let infer_with = |model: &str, datatype: &str, raw: Vec<u8>| proto::ModelInferRequest {
            model_name: model.into(),
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "image".into(),
                datatype: datatype.into(),
                shape: vec![1],
                parameters: Default::default(),
                contents: None,
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        };
        let framed = |b: &[u8]| {
            let mut r = (b.len() as u32).to_le_bytes().to_vec();
            r.extend_from_slice(b);
            r
        };
        let cases = [
            (infer_with("other", "BYTES", framed(&png)), 5, "unknown model 'other'"),
            (infer_with("medpatch", "BOOL", vec![1]), 3, "cannot be BOOL"),
            (infer_with("medpatch", "BYTES", framed(truncated)), 3, "image[0]"),
            (infer_with("medpatch", "BYTES", vec![9, 0, 0, 0, 1]), 3, "element 0 says 9 bytes but only 1 remain"),
            (
                proto::ModelInferRequest { raw_input_contents: vec![], ..infer_with("medpatch", "BYTES", vec![]) },
                3,
                "has no data",
            ),
        ];
        for (request, code, message) in cases {
            let (got, text) =
                grpc::<_, proto::ModelInferResponse>(s.grpc, "ModelInfer", &request, None).await.unwrap_err();
            assert_eq!(got, code, "{message}: {text}");
            assert!(text.contains(message), "expected '{message}' in '{text}'");
        }
        // Not a protobuf message at all: INVALID_ARGUMENT, not INTERNAL.
        let (code, message, _) = grpc_raw(s.grpc, "ModelInfer", vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff], None).await;
        assert_eq!(code, 3, "{message}");
    });

    // Still serving, and the failures were counted.
    let reply = infer_files(s.http, &[&png], "");
    assert_eq!(reply.status, 200);
    let text = metrics(&s);
    assert!(metric(&text, "nv_inference_request_failure{model=\"medpatch\",version=\"1\",reason=\"OTHER\"}") >= 20.0);
    assert_eq!(metric(&text, "nv_inference_pending_request_count"), 0.0);
}

#[test]
fn oversized_bodies_are_refused_on_both_transports() {
    let s = TestServer::start(medpatch_serve::ServeConfig { max_body_bytes: 100_000, ..config() });
    let big = vec![b' '; 150_000];
    let reply = http(s.http, "POST", "/v1/predict", &[], &big);
    assert_eq!(reply.status, 413);
    assert!(reply.error().contains("over the limit of 100000 bytes (--max-body-bytes)"), "{}", reply.error());
    // Declared too large: refused before the body is read (none is sent here).
    let mut stream = std::net::TcpStream::connect(s.http).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
        .write_all(b"POST /v2/models/medpatch/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut std::io::BufReader::new(stream)).unwrap();
    assert_eq!(reply.status, 413);
    assert!(reply.error().contains("of 999999999 bytes"), "{}", reply.error());
    // Chunked, no length: cut off at the limit.
    let mut stream = std::net::TcpStream::connect(s.http).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        request.extend_from_slice(b"2710\r\n");
        request.extend_from_slice(&[b'a'; 10_000]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let _ = stream.write_all(&request);
    let reply = read_reply(&mut std::io::BufReader::new(stream)).unwrap();
    assert_eq!(reply.status, 413);
    s.runtime().block_on(async {
        let request = proto::ModelInferRequest {
            model_name: "medpatch".into(),
            raw_input_contents: vec![vec![0u8; 150_000].into()],
            ..Default::default()
        };
        let (code, message) =
            grpc::<_, proto::ModelInferResponse>(s.grpc, "ModelInfer", &request, None).await.unwrap_err();
        assert_eq!(code, 8, "RESOURCE_EXHAUSTED: {message}");
    });
    assert_eq!(http(s.http, "GET", "/v2/health/ready", &[], b"").status, 200);
}

#[test]
fn a_full_queue_answers_busy_with_retry_after() {
    let s = TestServer::start(medpatch_serve::ServeConfig { max_queue_requests: 1, ..config() });
    // A client that sends half its body holds the one queue slot.
    let mut slow = std::net::TcpStream::connect(s.http).unwrap();
    slow.write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf a body").unwrap();
    let pending = "nv_inference_pending_request_count";
    let mut admitted = false;
    for _ in 0..500 {
        if metric(&metrics(&s), pending) == 1.0 {
            admitted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(admitted, "the slow request was never admitted");
    let png = bundled_png();
    let reply = http(s.http, "POST", "/v1/predict", &[], &png);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(reply.error().contains("busy"), "{}", reply.error());
    s.runtime().block_on(async {
        let request = proto::ModelInferRequest { model_name: "medpatch".into(), ..Default::default() };
        let (code, message) =
            grpc::<_, proto::ModelInferResponse>(s.grpc, "ModelInfer", &request, None).await.unwrap_err();
        assert_eq!(code, 8, "RESOURCE_EXHAUSTED: {message}");
    });
    // Health and metadata are not inference: still answered.
    assert_eq!(http(s.http, "GET", "/v2/models/medpatch", &[], b"").status, 200);
    // The slow client gives up: its slot is free again.
    drop(slow);
    let mut freed = false;
    for _ in 0..500 {
        if metric(&metrics(&s), pending) == 0.0 {
            freed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(freed, "the disconnected request kept its slot");
    assert_eq!(http(s.http, "POST", "/v1/predict", &[], &png).status, 200);
    let text = metrics(&s);
    assert!(metric(&text, "nv_inference_request_failure{model=\"medpatch\",version=\"1\",reason=\"REJECTED\"}") >= 2.0);
}

#[test]
fn bearer_tokens_are_required_except_for_health_probes() {
    let s = TestServer::start(medpatch_serve::ServeConfig { auth_token: Some("s3cret-token".into()), ..config() });
    assert_eq!(http(s.http, "GET", "/v2/health/live", &[], b"").status, 200);
    assert_eq!(http(s.http, "GET", "/v2/health/ready", &[], b"").status, 200);
    for (headers, status) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer wrong")], 401),
        (vec![("Authorization", "Bearer s3cret-toke")], 401),
        (vec![("Authorization", "Basic s3cret-token")], 401),
        (vec![("Authorization", "Bearer s3cret-token")], 200),
        (vec![("Authorization", "bearer s3cret-token")], 200),
    ] {
        for path in ["/v2", "/metrics", "/v2/models/medpatch"] {
            let reply = http(s.http, "GET", path, &headers, b"");
            assert_eq!(reply.status, status, "{path} {headers:?}");
            if status == 401 {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
                assert!(reply.error().contains("bearer token"));
            }
        }
    }
    s.runtime().block_on(async {
        let live: proto::ServerLiveResponse =
            grpc(s.grpc, "ServerLive", &proto::ServerLiveRequest {}, None).await.unwrap();
        assert!(live.live);
        let request = proto::ModelMetadataRequest { name: "medpatch".into(), version: String::new() };
        let (code, _) =
            grpc::<_, proto::ModelMetadataResponse>(s.grpc, "ModelMetadata", &request, None).await.unwrap_err();
        assert_eq!(code, 16, "UNAUTHENTICATED");
        let (code, _) =
            grpc::<_, proto::ModelMetadataResponse>(s.grpc, "ModelMetadata", &request, Some("nope")).await.unwrap_err();
        assert_eq!(code, 16);
        let model: proto::ModelMetadataResponse =
            grpc(s.grpc, "ModelMetadata", &request, Some("s3cret-token")).await.unwrap();
        assert_eq!(model.name, "medpatch");
    });
}

#[test]
fn tls_serves_rest_and_grpc() {
    let data = repo_root().join("serve/tests/data");
    let s = TestServer::start(medpatch_serve::ServeConfig {
        tls: Some(medpatch_serve::TlsFiles { cert: data.join("server.pem"), key: data.join("server.key") }),
        ..config()
    });
    let ca = std::fs::read(data.join("ca.pem")).unwrap();
    let client = |alpn: &[u8]| {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let (http_addr, grpc_addr) = (s.http, s.grpc);
    s.runtime().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tcp = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        let mut tls = client(b"http/1.1").connect(name.clone(), tcp).await.unwrap();
        tls.write_all(&request_bytes("GET", "/v2/models/medpatch", &[], b"", true)).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(IO_TIMEOUT, tls.read_to_end(&mut raw)).await.unwrap().unwrap();
        let reply = read_reply(&mut std::io::BufReader::new(&raw[..])).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["name"], "medpatch");

        let tcp = tokio::net::TcpStream::connect(grpc_addr).await.unwrap();
        let tls = client(b"h2").connect(name, tcp).await.unwrap();
        let (h2, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let request = proto::ServerMetadataRequest {};
        let mut frame = vec![0u8, 0, 0, 0, 0];
        use prost::Message;
        frame.extend_from_slice(&request.encode_to_vec());
        let (code, message, body) = grpc_on(h2, grpc_addr, "ServerMetadata", frame, None).await;
        assert_eq!(code, 0, "{message}");
        let meta = proto::ServerMetadataResponse::decode(&body[5..]).unwrap();
        assert_eq!(meta.name, "medpatch");
    });
    // Plain HTTP on the TLS port gets no answer.
    let plain = try_http(http_addr, "GET", "/v2/health/live", &[], b"");
    assert!(plain.is_err() || plain.unwrap().status != 200);
    assert!(s.shutdown().is_ok());
}

#[test]
fn batches_form_across_requests_and_answers_do_not_depend_on_the_batch() {
    // Four requests, a batch of four, a long delay: the batch goes when the fourth arrives.
    let batching = medpatch_serve::BatchPolicy {
        max_batch_images: 4,
        max_queue_delay: Duration::from_secs(20),
        preferred_batch_images: vec![],
    };
    let s = TestServer::start(medpatch_serve::ServeConfig { batching, ..config() });
    let png = bundled_png();
    let (w, h) = (50usize, 40usize);
    let images: Vec<Vec<u8>> = (0..3)
        .map(|k| {
            let image = GrayImage {
                width: w as u32,
                height: h as u32,
                pixels: (0..w * h).map(|i| ((i * (k + 3)) % 97) as f32 / 96.0).collect(),
            };
            medpatch_engine::render::png_gray8(&image).unwrap()
        })
        .collect();
    let files: Vec<&[u8]> = vec![&png, &images[0], &images[1], &images[2]];
    let addr = s.http;
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let handles: Vec<_> = files.iter().map(|f| scope.spawn(move || infer_files(addr, &[f], ""))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (reply, file) in replies.iter().zip(&files) {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["parameters"]["batch_images"], 4);
        assert_outputs_match(&outputs_f32(reply), &[&reference(file)]);
    }
    let text = metrics(&s);
    assert_eq!(metric(&text, "nv_inference_exec_count"), 1.0);
    assert_eq!(metric(&text, "nv_inference_count"), 4.0);
    assert_eq!(metric(&text, "medpatch_batch_size_total{model=\"medpatch\",version=\"1\",images=\"4\"}"), 1.0);
    drop(s);

    // A preferred size goes as soon as it can be formed: two requests, preferred 2, a long delay.
    let batching = medpatch_serve::BatchPolicy {
        max_batch_images: 8,
        max_queue_delay: Duration::from_secs(20),
        preferred_batch_images: vec![2],
    };
    let s = TestServer::start(medpatch_serve::ServeConfig { batching, ..config() });
    let addr = s.http;
    std::thread::scope(|scope| {
        let a = scope.spawn(|| infer_files(addr, &[&png], ""));
        let b = scope.spawn(|| infer_files(addr, &[&images[0]], ""));
        for reply in [a.join().unwrap(), b.join().unwrap()] {
            assert_eq!(reply.status, 200);
            assert_eq!(reply.json()["parameters"]["batch_images"], 2);
        }
    });
    assert_eq!(metric(&metrics(&s), "nv_inference_exec_count"), 1.0);
}

#[test]
fn timeouts_and_disconnects_leave_the_queue_and_the_server_serving() {
    let s = TestServer::start(config());
    let png = bundled_png();
    // Triton's `timeout` parameter (microseconds): expired before its batch could start.
    let reply = infer_files(s.http, &[&png], r#","parameters":{"timeout":1}"#);
    assert_eq!(reply.status, 504, "{}", String::from_utf8_lossy(&reply.body));
    assert!(reply.error().contains("past its timeout"), "{}", reply.error());
    s.runtime().block_on(async {
        let mut raw = (png.len() as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&png);
        let mut parameters = std::collections::HashMap::new();
        parameters.insert(
            "timeout".to_string(),
            proto::InferParameter { parameter_choice: Some(proto::infer_parameter::ParameterChoice::Int64Param(1)) },
        );
        let request = proto::ModelInferRequest {
            model_name: "medpatch".into(),
            parameters,
            inputs: vec![proto::model_infer_request::InferInputTensor {
                name: "image".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                parameters: Default::default(),
                contents: None,
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        };
        let (code, _) = grpc::<_, proto::ModelInferResponse>(s.grpc, "ModelInfer", &request, None).await.unwrap_err();
        assert_eq!(code, 4, "DEADLINE_EXCEEDED");
    });
    // Clients that disconnect: after sending a whole request, halfway through the body, or
    // before the headers end.
    let (whole, n) = binary_files_request(&[&png], "");
    let header = format!("Inference-Header-Content-Length: {n}\r\n");
    for i in 0..12 {
        let mut stream = std::net::TcpStream::connect(s.http).unwrap();
        let mut request = request_bytes("POST", "/v2/models/medpatch/infer", &[], &whole, false);
        let at = request.iter().position(|&b| b == b'\n').unwrap() + 1;
        request.splice(at..at, header.bytes());
        let cut = match i % 3 {
            0 => request.len(),
            1 => request.len() - whole.len() / 2,
            _ => 20,
        };
        let _ = stream.write_all(&request[..cut]);
        drop(stream);
    }
    let mut settled = false;
    for _ in 0..1000 {
        if metric(&metrics(&s), "nv_inference_pending_request_count") == 0.0 {
            settled = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(settled, "requests of disconnected clients still pending");
    let reply = infer_files(s.http, &[&png], "");
    assert_eq!(reply.status, 200);
    assert_outputs_match(&outputs_f32(&reply), &[&reference(&png)]);
    assert!(s.shutdown().is_ok());
}
