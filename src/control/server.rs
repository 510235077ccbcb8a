//! Server side of the control socket: accepts connections, parses requests and forwards them to
//! the daemon's main loop, which owns all state and answers through a oneshot channel.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context;
use log::debug;
use log::warn;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;

use super::Reply;
use super::Request;

/// Largest request line the daemon reads: requests are a few dozen bytes; a longer line gets an
/// error reply, and no connection makes the daemon buffer more than this.
pub const MAX_REQUEST: usize = 64 << 10;
/// Connections served at once. One more gets a "busy" reply at once: a flood or a pile of stuck
/// clients costs at most this many small buffers, and never the event loop's time.
pub const MAX_CONNECTIONS: usize = 32;
/// A client has this long to send its request, and again to take its reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request together with the channel its reply goes back on.
pub type Envelope = (Request, oneshot::Sender<Reply>);

/// A bound control socket; the file is removed on drop.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600. A stale socket file (no listener) is replaced; a live one
    /// means another daemon runs, which is an error.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another bpfqos daemon is already listening on {}",
                    path.display()
                ),
                Err(_) => std::fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?,
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
        }
        // Bind under a restrictive umask so the socket is never reachable by others, not even in
        // the instant between bind() and chmod().
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts connections forever, handing each to its own task (at most [`MAX_CONNECTIONS`]
    /// at once; the one over gets a "busy" error reply).
    pub async fn serve(self, to_main: mpsc::Sender<Envelope>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let tx = to_main.clone();
                        tokio::task::spawn_local(async move {
                            if let Err(e) = handle(stream, tx).await {
                                debug!("control connection: {e:#}");
                            }
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        tokio::task::spawn_local(async move {
                            let busy = Reply::err(format!(
                                "busy: {MAX_CONNECTIONS} control connections are open; try again"
                            ));
                            let _ = send_reply(stream, &busy).await;
                        });
                    }
                },
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("control socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(stream: UnixStream, to_main: mpsc::Sender<Envelope>) -> anyhow::Result<()> {
    let (rd, wr) = stream.into_split();
    // One byte over the limit tells a too-long line from one exactly at it.
    let mut reader = BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let read = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_until(b'\n', &mut line))
        .await
        .context("request timed out")??;
    if read == 0 {
        return Ok(());
    }
    let reply = if line.len() > MAX_REQUEST {
        Reply::err(format!(
            "bad request: longer than {MAX_REQUEST} bytes (one JSON object per line)"
        ))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                to_main
                    .send((req, tx))
                    .await
                    .context("daemon is shutting down")?;
                rx.await
                    .unwrap_or_else(|_| Reply::err("daemon is shutting down"))
            }
            Err(e) => Reply::err(format!("bad request: {e}")),
        }
    };
    send_reply(wr, &reply).await
}

/// Writes `reply` as one line, giving the client [`CLIENT_TIMEOUT`] to take it.
async fn send_reply(mut wr: impl AsyncWriteExt + Unpin, reply: &Reply) -> anyhow::Result<()> {
    let mut out = serde_json::to_vec(reply)?;
    out.push(b'\n');
    tokio::time::timeout(CLIENT_TIMEOUT, wr.write_all(&out))
        .await
        .context("reply timed out")??;
    Ok(())
}
