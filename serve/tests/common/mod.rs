//! Helpers for the service's tests: a server started in-process on loopback (stopped on drop), a
//! plain HTTP/1.1 client on std sockets (so that tests can also send what no library would), and a
//! gRPC client on h2. Every network wait has a timeout.

#![allow(dead_code)]

use medpatch_engine::{Engine, Provider, ProviderChoice};
use medpatch_serve::{RunningServer, ServeConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// The test engine: the embedded demo model on ONNX Runtime when the pinned library is there
/// (scripts/test.sh sets ORT_DYLIB_PATH), else tract; one thread, like the rest of the suite's
/// side-by-side tests.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let provider = if std::env::var_os("ORT_DYLIB_PATH").is_some() { Provider::Cpu } else { Provider::Tract };
        Arc::new(Engine::builder().provider(ProviderChoice::Only(provider)).threads(1).build().expect("test engine"))
    }))
}

/// Loopback, any free ports, quiet.
pub fn config() -> ServeConfig {
    ServeConfig {
        http: "127.0.0.1:0".parse().unwrap(),
        grpc: Some("127.0.0.1:0".parse().unwrap()),
        access_log: false,
        cpu_threads: 2,
        drain_timeout: Duration::from_secs(20),
        ..ServeConfig::default()
    }
}

/// A server on its own runtime; shut down (drained) when dropped.
pub struct TestServer {
    runtime: tokio::runtime::Runtime,
    server: Option<RunningServer>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

impl TestServer {
    pub fn start(config: ServeConfig) -> Self {
        Self::with_engine(engine(), config)
    }

    pub fn with_engine(engine: Arc<Engine>, config: ServeConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let server = runtime.block_on(medpatch_serve::start(engine, config)).expect("server starts");
        let (http, grpc) = (server.http_addr(), server.grpc_addr().unwrap_or(server.http_addr()));
        Self { runtime, server: Some(server), http, grpc }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    pub fn shutdown(mut self) -> Result<(), medpatch_serve::ServeError> {
        let server = self.server.take().unwrap();
        self.runtime.block_on(server.shutdown())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// The protocol's error message.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {self:?}")).to_string()
    }
    /// An answer with Triton's binary extension: (JSON header, binary data).
    pub fn split_binary(&self) -> (Value, Vec<u8>) {
        match self.header("inference-header-content-length") {
            Some(n) => {
                let n: usize = n.parse().unwrap();
                (serde_json::from_slice(&self.body[..n]).unwrap(), self.body[n..].to_vec())
            }
            None => (self.json(), Vec::new()),
        }
    }
}

/// One request on a new connection (`Connection: close`).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(&request_bytes(method, path, headers, body, true))?;
    read_reply(&mut BufReader::new(stream))
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8], close: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Read one response (Content-Length or chunked body).
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| invalid(format!("header {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers.iter().find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(n) = get("content-length") {
        let n: usize = n.parse().map_err(|_| invalid(format!("content-length {n}")))?;
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| invalid(format!("chunk size {line:?}")))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if status != 204 && status != 304 {
        reader.read_to_end(&mut body)?;
    }
    Ok(Reply { status, headers, body })
}

/// A keep-alive HTTP/1.1 connection for many requests (load tests).
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(stream) })
    }
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
        self.reader.get_mut().write_all(&request_bytes(method, path, headers, body, false))?;
        read_reply(&mut self.reader)
    }
}

/// A BYTES infer request for encoded files (Triton's binary extension): (body, JSON header length).
pub fn binary_files_request(files: &[&[u8]], extra_json: &str) -> (Vec<u8>, usize) {
    let mut data = Vec::new();
    for f in files {
        data.extend_from_slice(&(f.len() as u32).to_le_bytes());
        data.extend_from_slice(f);
    }
    let json = format!(
        r#"{{"inputs":[{{"name":"image","datatype":"BYTES","shape":[{}],"parameters":{{"binary_data_size":{}}}}}]{extra_json}}}"#,
        files.len(),
        data.len()
    );
    let n = json.len();
    let mut body = json.into_bytes();
    body.extend_from_slice(&data);
    (body, n)
}

/// POST an encoded-file infer request and return the answer.
pub fn infer_files(addr: SocketAddr, files: &[&[u8]], extra_json: &str) -> Reply {
    let (body, n) = binary_files_request(files, extra_json);
    http(addr, "POST", "/v2/models/medpatch/infer", &[("Inference-Header-Content-Length", &n.to_string())], &body)
}

/// f32 little-endian values.
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The named outputs of an answer as f32 values (binary or JSON), in answer order.
pub fn outputs_f32(reply: &Reply) -> Vec<(String, Vec<i64>, Vec<f32>)> {
    let (header, binary) = reply.split_binary();
    let mut offset = 0;
    header["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs: {header}"))
        .iter()
        .map(|o| {
            let name = o["name"].as_str().unwrap().to_string();
            let shape = o["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            let values = match o["parameters"]["binary_data_size"].as_u64() {
                Some(n) => {
                    let v = f32s(&binary[offset..offset + n as usize]);
                    offset += n as usize;
                    v
                }
                None => o["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            };
            (name, shape, values)
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

// ---- gRPC over h2 --------------------------------------------------------------------------------

/// A gRPC answer: the decoded message, or the status code and message.
pub type GrpcResult<T> = Result<T, (i32, String)>;

/// One unary call with a prost message.
pub async fn grpc<Req: prost::Message, Resp: prost::Message + Default>(
    addr: SocketAddr,
    method: &str,
    request: &Req,
    token: Option<&str>,
) -> GrpcResult<Resp> {
    let mut frame = vec![0u8];
    let payload = request.encode_to_vec();
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let (code, message, body) = grpc_raw(addr, method, frame, token).await;
    if code != 0 {
        return Err((code, message));
    }
    assert!(body.len() >= 5 && body[0] == 0, "a gRPC message frame: {body:?}");
    Ok(Resp::decode(&body[5..]).expect("a decodable answer"))
}

/// One unary call with a raw request body (a gRPC frame or anything else): (status, message, body).
pub async fn grpc_raw(addr: SocketAddr, method: &str, body: Vec<u8>, token: Option<&str>) -> (i32, String, Vec<u8>) {
    let call = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        grpc_on(client, addr, method, body, token).await
    };
    tokio::time::timeout(IO_TIMEOUT, call).await.expect("gRPC call within the timeout")
}

/// One call on an open h2 connection (plain or TLS).
pub async fn grpc_on(
    client: h2::client::SendRequest<bytes::Bytes>,
    addr: SocketAddr,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (i32, String, Vec<u8>) {
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/inference.GRPCInferenceService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false).unwrap();
    // A server that refuses at once (unauthenticated, unknown method) may have closed the stream
    // already: its answer says why, not this send.
    let _ = send.send_data(bytes::Bytes::from(body), true);
    let response = response.await.unwrap();
    let status_of = |h: &http::HeaderMap| -> Option<(i32, String)> {
        let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = h.get("grpc-message").map(|m| m.to_str().unwrap_or("").to_string()).unwrap_or_default();
        Some((code, message))
    };
    if let Some((code, message)) = status_of(response.headers()) {
        return (code, percent_decode(&message), Vec::new());
    }
    let mut recv = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap().unwrap_or_default();
    let (code, message) = status_of(&trailers).unwrap_or((-1, "no grpc-status".into()));
    (code, percent_decode(&message), data)
}

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percentiles of latencies in ms: (p50, p99).
pub fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}
