//! Client of the daemon's API, used by every subcommand but `up`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;

use crate::{daemon::Config, types::ErrorBody};

/// A connection target: the socket in a run directory.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client of the daemon whose run directory is `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        Client {
            socket: Config::socket(run_dir),
        }
    }

    /// Whether a daemon is behind the API socket: one accepts connections,
    /// or the socket is there but not this user's to use.
    pub fn daemon_listens(&self) -> bool {
        use std::io::ErrorKind::{ConnectionRefused, NotFound};
        match std::os::unix::net::UnixStream::connect(&self.socket) {
            Ok(_) => true,
            Err(e) => !matches!(e.kind(), NotFound | ConnectionRefused),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// `GET path`, whose answer is a stream of lines: `each` gets every
    /// line as it arrives, until the daemon ends the stream.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let resp = self.request(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return check(status, &bytes);
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                each(String::from_utf8_lossy(&line).trim_end())?;
            }
        }
        Ok(())
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = match UnixStream::connect(&self.socket).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "permission denied on {}: the netplane API is root's only",
                self.socket.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "no netplane daemon is running (cannot connect to {})",
                        self.socket.display()
                    )
                });
            }
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "netplane")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        sender
            .send_request(req)
            .await
            .context("sending request to the daemon")
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self.call(method, path, body).await?;
        check(status, &bytes)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("decoding the daemon's answer to {path}"))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::GET, path, None).await
    }

    /// `DELETE path`, decoding the JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json(Method::DELETE, path, None).await
    }

    /// `POST path` with a JSON body, decoding the JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(Method::POST, path, body).await
    }

    /// `method path` with a JSON body, decoding the JSON answer.
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.json(method, path, Some(serde_json::to_vec(body)?))
            .await
    }

    /// `POST path` or `DELETE path` expecting no content.
    pub async fn act(&self, method: Method, path: &str) -> anyhow::Result<()> {
        let (status, bytes) = self.call(method, path, None).await?;
        check(status, &bytes)
    }
}

/// The daemon refused a request: its status and its message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// The HTTP status, which says whose fault it was.
    pub status: StatusCode,
    /// What the daemon said.
    pub message: String,
}

fn check(status: StatusCode, body: &[u8]) -> anyhow::Result<()> {
    if status.is_success() {
        return Ok(());
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Err(Refused {
            status,
            message: e.error,
        }
        .into()),
        Err(_) => Err(anyhow!(
            "daemon answered {status}: {}",
            String::from_utf8_lossy(body)
        )),
    }
}
