//! A seeded mutation test of the request parsers (REST JSON + binary tensors, gRPC messages) and the
//! checks behind them: thousands of corrupted requests, each parsed or refused with a message,
//! never a panic. (The decoders behind them have their own fuzz targets and mutation test.)

use crate::error::ErrorKind;
use crate::infer::{Checker, RawRequest};
use crate::proto;
use bytes::Bytes;
use medpatch_engine::decode::GrayImage;
use medpatch_engine::{Engine, Provider, ProviderChoice};
use medpatch_models::Rng;
use prost::Message;

const SEED: u64 = 21;
const MUTATIONS_PER_SEED: usize = 700;

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// One random edit: bit flips, a byte set to a boundary value, bytes inserted, deleted, duplicated,
/// a digit changed (JSON numbers and lengths), or a truncation.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + below(rng, 3) {
        let at = below(rng, out.len());
        match below(rng, 7) {
            0 if !out.is_empty() => out[at] ^= 1 << below(rng, 8),
            1 if !out.is_empty() => out[at] = [0, 0x7f, 0x80, 0xff, b'"', b'-', b'9'][below(rng, 7)],
            2 => {
                let n = 1 + below(rng, 8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                out.splice(at..at, bytes);
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + below(rng, 16)).min(out.len());
                out.drain(at..end);
            }
            4 if !out.is_empty() => {
                let end = (at + 1 + below(rng, 32)).min(out.len());
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            5 => {
                if let Some(d) = out.iter().skip(at).position(u8::is_ascii_digit) {
                    out[at + d] = b'0' + below(rng, 10) as u8;
                }
            }
            _ => out.truncate(at),
        }
    }
    out
}

/// REST bodies with their JSON header length, and encoded gRPC messages.
type Seeds = (Vec<(Vec<u8>, Option<usize>)>, Vec<Vec<u8>>);

fn seeds() -> Seeds {
    let image = GrayImage { width: 12, height: 10, pixels: (0..120).map(|i| (i % 11) as f32 / 10.0).collect() };
    let png = medpatch_engine::render::png_gray8(&image).unwrap();
    let mut framed = (png.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&png);
    let json_pixels = br#"{"id":"m","parameters":{"map":"scaled","timeout":5000000},"inputs":[{"name":"image","datatype":"UINT8","shape":[1,2,3],"data":[[0,1,2],[250,251,255]]}],"outputs":[{"name":"logits","parameters":{"binary_data":false}},{"name":"probabilities"}]}"#.to_vec();
    let header = format!(
        r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[1],"parameters":{{"binary_data_size":{}}}}}],"parameters":{{"overlay_classes":"Edema,pneumothorax","binary_data_output":true}}}}"#,
        framed.len()
    );
    let mut binary = header.clone().into_bytes();
    binary.extend_from_slice(&framed);
    let floats: Vec<u8> = [0.0f32, 0.5, 1.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    let fp32_header = format!(
        r#"{{"inputs":[{{"name":"image","datatype":"FP32","shape":[1,2,2],"parameters":{{"binary_data_size":{}}}}}]}}"#,
        floats.len()
    );
    let mut fp32 = fp32_header.clone().into_bytes();
    fp32.extend_from_slice(&floats);
    let rest = vec![(json_pixels, None), (binary, Some(header.len())), (fp32, Some(fp32_header.len()))];

    let tensor = |datatype: &str, shape: Vec<i64>, contents| proto::model_infer_request::InferInputTensor {
        name: "image".into(),
        datatype: datatype.into(),
        shape,
        parameters: Default::default(),
        contents,
    };
    let grpc = [
        proto::ModelInferRequest {
            model_name: "medpatch".into(),
            inputs: vec![tensor("BYTES", vec![1], None)],
            raw_input_contents: vec![Bytes::from(framed)],
            ..Default::default()
        },
        proto::ModelInferRequest {
            model_name: "medpatch".into(),
            inputs: vec![tensor(
                "UINT16",
                vec![1, 2, 2],
                Some(proto::InferTensorContents { uint_contents: vec![0, 1, 65535, 300], ..Default::default() }),
            )],
            ..Default::default()
        },
    ]
    .iter()
    .map(Message::encode_to_vec)
    .collect();
    (rest, grpc)
}

#[test]
fn mutated_requests_are_parsed_or_refused_with_a_message_never_a_panic() {
    let engine = Engine::builder().provider(ProviderChoice::Only(Provider::Tract)).threads(1).build().unwrap();
    let checker = Checker { engine: &engine, max_images: 4, binary_by_default: false };
    let (rest, grpc) = seeds();
    let check = |raw: Result<RawRequest, crate::error::ApiError>| -> bool {
        match raw.and_then(|r| checker.prepare(r)) {
            Ok(prepared) => {
                assert!(!prepared.images.is_empty());
                true
            }
            Err(e) => {
                assert!(
                    matches!(e.kind, ErrorKind::BadRequest | ErrorKind::Unprocessable),
                    "a malformed request is the client's error, not {:?}: {}",
                    e.kind,
                    e.message
                );
                assert!(e.message.len() > 10, "a message that names the problem: {:?}", e.message);
                false
            }
        }
    };
    // The seeds themselves are valid.
    for (body, header) in &rest {
        let prepared = crate::rest::parse_infer(&Bytes::from(body.clone()), *header).and_then(|r| checker.prepare(r));
        if let Err(e) = prepared {
            panic!("a seed is refused: {}", e.message);
        }
    }
    let mut rng = Rng::derive(SEED, &[1]);
    let (mut accepted, mut refused) = (0, 0);
    for (k, (body, header)) in rest.iter().enumerate() {
        for i in 0..MUTATIONS_PER_SEED {
            let mutated = mutate(&mut rng, body);
            // Sometimes the header length is off as well.
            let header = header.map(|n| match below(&mut rng, 8) {
                0 => n.saturating_sub(below(&mut rng, 4)),
                1 => n + below(&mut rng, 4),
                _ => n.min(mutated.len()),
            });
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check(crate::rest::parse_infer(&Bytes::from(mutated.clone()), header))
            }));
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!(
                    "REST seed {k}, mutation {i} (seed {SEED}) panicked: {:?}",
                    String::from_utf8_lossy(&mutated)
                ),
            }
        }
    }
    for (k, message) in grpc.iter().enumerate() {
        for i in 0..MUTATIONS_PER_SEED {
            let mutated = mutate(&mut rng, message);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match proto::ModelInferRequest::decode(&mutated[..]) {
                    // tonic refuses what prost cannot decode (INVALID_ARGUMENT, tests/service.rs).
                    Err(_) => false,
                    Ok(request) => check(crate::grpc::raw_request(request)),
                }
            }));
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("gRPC seed {k}, mutation {i} (seed {SEED}) panicked: {mutated:?}"),
            }
        }
    }
    eprintln!("{accepted} mutated requests accepted, {refused} refused with a message");
    assert!(accepted > 50 && refused > 1000, "the mutations reach both outcomes: {accepted} / {refused}");
}
