//! The outbound HTTP client: the one place where the service reaches out to receivers, and
//! so the one place where the SSRF guard lives (SPEC §5).
//!
//! - Names are resolved by [`GuardedResolver`], which drops every forbidden address; the
//!   client then connects only to the addresses it returned, so there is no window between
//!   the check and the connection for DNS rebinding.
//! - Literal IP hosts are checked by [`check_target`] before any connection.
//! - Redirects are never followed, proxies from the environment are ignored, and bodies are
//!   read only up to a cap.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{
    connect::{dns::Name, HttpConnector},
    Client,
};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::{Host, Url};

use crate::domain::address::AllowList;

/// The shared client: hyper's pooled HTTP/1.1 client (HTTP/2 when a TLS receiver offers it
/// by ALPN), over TLS by rustls with the Mozilla roots, connecting through [`GuardedResolver`].
pub type HttpClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// The address is forbidden by the SSRF rules (or resolved only to forbidden addresses).
#[derive(Debug)]
pub struct Blocked(pub String);

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocked: {}", self.0)
    }
}

impl StdError for Blocked {}

/// The receiver's name did not resolve.
#[derive(Debug)]
pub struct DnsFailure(pub String);

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dns: {}", self.0)
    }
}

impl StdError for DnsFailure {}

/// Resolves names with the system resolver and keeps only the addresses the allow-list
/// admits.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: AllowList,
}

type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, BoxError>> + Send>>;
type BoxError = Box<dyn StdError + Send + Sync>;

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(DnsFailure(format!("{host}: {e}"))) as BoxError)?;
            let mut allowed: Vec<SocketAddr> = Vec::new();
            let mut refused = None;
            for addr in found {
                match allow.check(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(why) => refused = Some(why),
                }
            }
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".into());
                return Err(
                    Box::new(Blocked(format!("{host} resolves only to forbidden addresses: {why}"))) as BoxError
                );
            }
            Ok(allowed.into_iter())
        })
    }
}

/// Checks a URL before connecting: a literal IP host must pass the allow-list (names are
/// judged by the resolver at connect time).
pub fn check_target(url: &Url, allow: &AllowList) -> Result<(), Blocked> {
    let verdict = match url.host() {
        Some(Host::Ipv4(ip)) => allow.check(ip.into()),
        Some(Host::Ipv6(ip)) => allow.check(ip.into()),
        Some(Host::Domain(_)) => Ok(()),
        None => Err("the URL has no host".into()),
    };
    verdict.map_err(Blocked)
}

/// The TLS set-up could not be built (no usable protocol version in the crypto provider).
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct ClientError(#[from] rustls::Error);

/// The shared client: keep-alive connection pools per receiver, no redirects (hyper follows
/// none), no proxies (it knows none). `max_idle_per_host` should be the most exchanges that
/// can run at once: a smaller pool closes connections that the next attempts to the same host
/// then open again.
pub fn build_client(allow: &AllowList, timeout: Duration, max_idle_per_host: usize) -> Result<HttpClient, ClientError> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow: allow.clone() });
    http.enforce_http(false); // https URLs pass through to the TLS layer
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .build(https))
}

/// Reads at most `cap` bytes of a response body and drops the rest unread.
pub async fn read_capped(mut body: hyper::body::Incoming, cap: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut read = Vec::new();
    while read.len() < cap {
        match body.frame().await.transpose()? {
            Some(frame) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = cap - read.len();
                    read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            None => break,
        }
    }
    Ok(read)
}

/// The kind of failure an exchange error stands for, and a message for a person.
/// `connecting`: the error came from opening the connection (resolving, TCP, TLS).
pub fn describe_error(e: &(dyn StdError + 'static), connecting: bool) -> (ErrorKind, String) {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    let mut parts = Vec::new();
    let mut kind = None;
    while let Some(err) = source {
        // Our own verdicts say everything: the client's wrappers around them ("client error
        // (Connect)", "dns error") would only blur them.
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return (ErrorKind::Blocked, b.to_string());
        }
        if let Some(d) = err.downcast_ref::<DnsFailure>() {
            return (ErrorKind::Dns, d.to_string());
        }
        if let Some(tls) = rustls_error(err) {
            parts.push(describe_tls(tls));
            break;
        }
        let timed_out =
            err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                || err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout);
        if timed_out {
            kind.get_or_insert(ErrorKind::Timeout);
        }
        let text = err.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    let kind = kind.unwrap_or(if connecting { ErrorKind::Connect } else { ErrorKind::Protocol });
    (kind, parts.join(": "))
}
/// The rustls error behind `err`: the TLS layer wraps it in `io::Error`s (two deep), whose
/// `source()` skips what they wrap.
fn rustls_error<'a>(mut err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        err = err.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// A TLS failure in words a receiver's owner can act on, with rustls's own name for it.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the receiver's TLS certificate is not signed by a trusted authority (self-signed?)",
            C::Expired => "the receiver's TLS certificate has expired",
            C::NotValidYet => "the receiver's TLS certificate is not valid yet",
            C::NotValidForName => "the receiver's TLS certificate is not valid for this host name",
            C::Revoked => "the receiver's TLS certificate is revoked",
            _ => "the receiver's TLS certificate was refused",
        },
        _ => "the TLS handshake with the receiver failed",
    };
    format!("{what} ({e})")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Blocked,
    Dns,
    Timeout,
    Connect,
    Protocol,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outer error like the client's, carrying `inner` as its source.
    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn StdError + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[test]
    fn our_own_verdicts_are_reported_without_the_client_wrappers() {
        let blocked = Wrapper(
            "client error (Connect)",
            Box::new(Wrapper("dns error", Box::new(Blocked("h resolves only to forbidden addresses: x".into())))),
        );
        assert_eq!(
            describe_error(&blocked, true),
            (ErrorKind::Blocked, "blocked: h resolves only to forbidden addresses: x".to_string())
        );
        let dns = Wrapper("client error (Connect)", Box::new(DnsFailure("h: no such host".into())));
        assert_eq!(describe_error(&dns, true), (ErrorKind::Dns, "dns: h: no such host".to_string()));
    }

    #[test]
    fn a_refused_certificate_is_described_in_words() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As the TLS layer reports it: inside two `io::Error`s.
        let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, refused));
        let tls = Wrapper("client error (Connect)", Box::new(io));
        let (kind, message) = describe_error(&tls, true);
        assert_eq!(kind, ErrorKind::Connect);
        assert!(message.contains("not signed by a trusted authority"), "{message}");
        assert!(message.contains("UnknownIssuer"), "rustls's own name is kept: {message}");
    }
}
