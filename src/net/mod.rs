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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::domain::address::AllowList;

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

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(DnsFailure(format!("{host}: {e}"))) as Box<dyn StdError + Send + Sync>)?;
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
                return Err(Box::new(Blocked(format!("{host} resolves to {why}"))) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
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

/// The shared client: keep-alive connection pools per receiver, no redirects, no proxies.
/// `max_idle_per_host` should be the most exchanges that can run at once: a smaller pool
/// closes connections that the next attempts to the same host then open again.
pub fn build_client(
    allow: &AllowList,
    timeout: Duration,
    user_agent: &str,
    max_idle_per_host: usize,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow: allow.clone() }))
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle_per_host)
        .tcp_nodelay(true)
        .user_agent(user_agent)
        .build()
}

/// Reads at most `cap` bytes of a response body and drops the rest unread.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await? {
            Some(chunk) => {
                let room = cap - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            None => break,
        }
    }
    Ok(body)
}

/// The kind of failure a client error stands for, and a message for a person.
pub fn describe_error(e: &reqwest::Error) -> (ErrorKind, String) {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    let mut parts = Vec::new();
    let mut kind = None;
    while let Some(err) = source {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            kind.get_or_insert(ErrorKind::Blocked);
            parts.push(b.to_string());
            break;
        }
        if let Some(d) = err.downcast_ref::<DnsFailure>() {
            kind.get_or_insert(ErrorKind::Dns);
            parts.push(d.to_string());
            break;
        }
        let text = err.to_string();
        if !parts.iter().any(|p: &String| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    let kind = kind.unwrap_or(if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Protocol
    });
    (kind, parts.join(": "))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Blocked,
    Dns,
    Timeout,
    Connect,
    Protocol,
}
