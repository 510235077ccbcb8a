//! The daemon's control socket: a root-only Unix stream socket carrying one JSON request and one
//! JSON reply per line.
//!
//! `bpfqos status`, `bpfqos reload` and the rpcd plugin are its clients. One line per message keeps
//! the protocol debuggable with `socat` and trivially framed.

pub mod server;

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use thiserror::Error;

/// Largest reply line the client accepts (status of many flows stays well below); the
/// server's own bound on requests is [`server::MAX_REQUEST`].
pub const MAX_LINE: usize = 4 << 20;

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Full status document.
    Status,
    /// Reload the configuration; a bad config keeps the running one.
    Reload,
    /// Liveness probe.
    Ping,
}

/// The daemon's reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Payload on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A successful reply carrying `data`.
    pub fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failed reply.
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(error.into()),
        }
    }
}

/// Why a client request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error("bpfqos daemon is not running (no listener on {path}: {source})")]
    NotRunning {
        /// Socket path.
        path: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// I/O after connecting.
    #[error("talking to the daemon on {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The reply was not valid JSON.
    #[error("the daemon's reply is not valid JSON: {0}")]
    BadReply(serde_json::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
}

/// Sends one request and waits (bounded) for its reply.
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::NotRunning {
        path: path.clone(),
        source,
    })?;
    // A reload applies the whole configuration before it answers: with thousands of circuits
    // the kernel alone takes seconds (docs/bench.md); anything else answers at once.
    let wait = match req {
        Request::Reload => Duration::from_secs(300),
        _ => Duration::from_secs(10),
    };
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(ClientError::BadReply)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64);
    let mut buf = String::new();
    reader.read_line(&mut buf).map_err(io)?;
    let reply: Reply = serde_json::from_str(&buf).map_err(ClientError::BadReply)?;
    if reply.ok {
        Ok(reply.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Daemon(
            reply.error.unwrap_or_else(|| "unspecified error".into()),
        ))
    }
}
