//! Accepting connections: plain TCP or TLS (rustls), HTTP/1.1 and HTTP/2 on every port (gRPC is
//! HTTP/2), graceful shutdown, and the structured access log.

use crate::config::TlsFiles;
use crate::server::ServeError;
use axum::Router;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which connection a request came on (a request extension, for the access log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "grpc".
    pub protocol: &'static str,
    pub tls: bool,
}

/// Tells the accept loops to stop.
pub(crate) struct Stop(watch::Sender<bool>);

impl Stop {
    pub fn new() -> Self {
        Self(watch::Sender::new(false))
    }
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// Accept connections on `listener` until stopped, then wait for the open ones to finish their
/// requests (idle keep-alive connections are closed at once; HTTP/2 ones get GOAWAY).
pub(crate) fn spawn(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    protocol: &'static str,
    stop: &Stop,
) -> JoinHandle<()> {
    let mut stopped = stop.0.subscribe();
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A timer gives HTTP/1 its header read timeout (slow clients cannot hold a connection
        // forever before sending a request) and HTTP/2 its keep-alive pings.
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        loop {
            tokio::select! {
                // The only change is to "stop" (or the server's handle is gone): either way, stop.
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let info = ConnInfo { peer, protocol, tls: tls.is_some() };
                        let (watcher, router, builder, tls) = (graceful.watcher(), router.clone(), builder.clone(), tls.clone());
                        tokio::spawn(async move {
                            match tls {
                                None => serve(builder, watcher, TokioIo::new(stream), router, info).await,
                                Some(acceptor) => {
                                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => serve(builder, watcher, TokioIo::new(stream), router, info).await,
                                        Ok(Err(e)) => eprintln!("medpatch: {peer}: TLS handshake failed: {e}"),
                                        Err(_) => eprintln!("medpatch: {peer}: TLS handshake timed out"),
                                    }
                                }
                            }
                        });
                    }
                    // Out of file descriptors, or a connection reset before accept: go on, gently.
                    Err(e) => {
                        eprintln!("medpatch: accept on {protocol} port failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        graceful.shutdown().await;
    })
}

async fn serve<I>(
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: TokioIo<I>,
    router: Router,
    info: ConnInfo,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = router.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(info);
        request
    });
    let connection = builder.serve_connection(io, TowerToHyperService::new(service));
    // A connection error (client reset, malformed HTTP) ends that connection only.
    let _ = watcher.watch(connection.into_owned()).await;
}

/// rustls for both listeners, offering HTTP/2 (gRPC needs it) and HTTP/1.1 by ALPN.
pub(crate) fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!("{}: no certificate in the file", files.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServeError::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ServeError::Tls(format!("{} with {}: {e}", files.cert.display(), files.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One access-log line (JSON) on stderr.
pub(crate) struct AccessLog<'a> {
    pub info: Option<&'a ConnInfo>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub grpc_status: Option<i32>,
    pub elapsed: Duration,
    pub bytes_out: Option<u64>,
    pub error: Option<&'a str>,
}

impl AccessLog<'_> {
    pub fn write(&self) {
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), rfc3339(SystemTime::now()).into());
        if let Some(info) = self.info {
            line.insert("proto".into(), info.protocol.into());
            line.insert("tls".into(), info.tls.into());
            line.insert("peer".into(), info.peer.to_string().into());
        }
        line.insert("method".into(), self.method.into());
        line.insert("path".into(), self.path.into());
        line.insert("status".into(), self.status.into());
        if let Some(code) = self.grpc_status {
            line.insert("grpc_status".into(), code.into());
        }
        line.insert("ms".into(), ((self.elapsed.as_secs_f64() * 1e6).round() / 1e3).into());
        if let Some(bytes) = self.bytes_out {
            line.insert("bytes_out".into(), bytes.into());
        }
        if let Some(error) = self.error {
            line.insert("error".into(), error.into());
        }
        eprintln!("{}", serde_json::Value::Object(line));
    }
}

/// `2026-12-03T10:24:26.123Z` (UTC), without a date-time library.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm, proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2026-12-03T10:24:26.5Z, and a leap day.
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_293_466_500)), "2026-12-03T10:24:26.500Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000Z");
    }
}
