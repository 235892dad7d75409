//! The REST API on the daemon's unix socket.

use std::{os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{
    net::UnixListener,
    sync::{Mutex, watch},
};
use tracing::{debug, info, warn};

use crate::{
    daemon::error::Error,
    daemon::metrics,
    daemon::relay::{self, Hub},
    daemon::tasks,
    daemon::{Config, Daemon, Handles, Shared},
    logic::monitor::MonitorFilter,
    types::{
        CniAdd, CniAttachmentKey, CniGc, ConnectRequest, CreateEndpoint, CreateNetwork,
        DisconnectRequest, ErrorBody, FlowFilter, Flushed, PortRequest, RemoveQuery,
    },
};

struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = if self.0.is_invalid_request() {
            StatusCode::BAD_REQUEST
        } else if self.0.is_not_found() {
            StatusCode::NOT_FOUND
        } else if self.0.is_conflict() {
            StatusCode::CONFLICT
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        (
            status,
            Json(ErrorBody {
                error: self.0.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn gone() -> ApiError {
    ApiError(Error::io(
        "serve",
        "API",
        std::io::Error::other("daemon is shutting down"),
    ))
}

async fn with<T>(
    state: &Shared,
    f: impl AsyncFnOnce(&mut Daemon) -> Result<T, Error>,
) -> ApiResult<T> {
    Ok(state.with_daemon(f).await.ok_or_else(gone)??)
}

/// Runs `f`, which reads the kernel's tables without the daemon, on a
/// blocking thread: the async workers keep serving meanwhile.
async fn off_the_workers<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ApiError(Error::io(
            "run",
            "a blocking task",
            std::io::Error::other(e),
        ))),
    }
}

/// Serves the API until SIGINT/SIGTERM (leaving the data path in place) or
/// `POST /v1/down` (after removing everything).
pub async fn serve(mut daemon: Daemon, cfg: &Config) -> anyhow::Result<()> {
    let socket = Config::socket(&cfg.run_dir);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let gc_interval = daemon.gc_interval();
    let event_maps = daemon.take_event_maps()?;
    let state: Shared = Arc::new(Handles {
        readers: daemon.readers()?,
        daemon: Mutex::new(Some(daemon)),
    });
    let hub = Hub::new();
    let monitored = event_maps.is_some();
    let events = event_maps.map(|maps| tokio::spawn(relay::run(maps, hub.clone(), state.clone())));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let gc = tokio::spawn(tasks::housekeeping(state.clone(), gc_interval));
    let membership = cfg
        .store
        .clone()
        .map(|url| tokio::spawn(tasks::keep_membership(state.clone(), url, cfg.store_ttl)));
    let metrics = match cfg.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("metrics: listening on {addr}: {e}"))?;
            info!(%addr, "metrics at /metrics");
            Some(tokio::spawn(serve_metrics(listener, state.clone())))
        }
        None => None,
    };
    let app = Router::new()
        .route(
            "/v1/info",
            get(async |State(s): State<Shared>| with(&s, async |d| Ok(Json(d.info()))).await),
        )
        .route(
            "/v1/endpoints",
            get(async |State(s): State<Shared>| with(&s, async |d| d.list().map(Json)).await).post(
                async |State(s): State<Shared>, Json(req): Json<CreateEndpoint>| {
                    with(&s, async |d| {
                        d.create(req).await.map(|i| (StatusCode::CREATED, Json(i)))
                    })
                    .await
                },
            ),
        )
        .route(
            "/v1/endpoints/{name}",
            get(async |State(s): State<Shared>, Path(n): Path<String>| {
                with(&s, async |d| d.inspect(&n).map(Json)).await
            })
            .delete(
                async |State(s): State<Shared>,
                       Path(n): Path<String>,
                       Query(q): Query<RemoveQuery>| {
                    with(&s, async |d| d.remove(&n, q.force).await.map(Json)).await
                },
            ),
        )
        .route(
            "/v1/endpoints/{name}/ports",
            get(async |State(s): State<Shared>, Path(n): Path<String>| {
                with(&s, async |d| d.ports(Some(&n)).map(Json)).await
            })
            .post(
                async |State(s): State<Shared>,
                       Path(n): Path<String>,
                       Json(req): Json<PortRequest>| {
                    with(&s, async |d| {
                        d.add_port(&n, &req.spec, &req.from, req.proxy_protocol)
                            .await
                            .map(Json)
                    })
                    .await
                },
            )
            .delete(
                async |State(s): State<Shared>,
                       Path(n): Path<String>,
                       Json(req): Json<PortRequest>| {
                    with(&s, async |d| d.remove_port(&n, &req.spec).map(Json)).await
                },
            ),
        )
        .route(
            "/v1/ports",
            get(async |State(s): State<Shared>| with(&s, async |d| d.ports(None).map(Json)).await),
        )
        .route(
            "/v1/flows",
            get(
                async |State(s): State<Shared>, Query(filter): Query<FlowFilter>| {
                    let only = filter.endpoint;
                    off_the_workers(move || s.readers.flows(only.as_deref()))
                        .await
                        .map(Json)
                },
            )
            .delete(
                async |State(s): State<Shared>, Query(filter): Query<FlowFilter>| {
                    let only = filter.endpoint;
                    off_the_workers(move || s.readers.flush_flows(only.as_deref()))
                        .await
                        .map(|flows| Json(Flushed { flows }))
                },
            ),
        )
        .route(
            "/v1/nat",
            get(async |State(s): State<Shared>| {
                let masquerade = with(&s, async |d| d.masquerade_rule()).await?;
                off_the_workers(move || s.readers.nat_table(masquerade))
                    .await
                    .map(Json)
            }),
        )
        .route(
            "/v1/networks",
            get(async |State(s): State<Shared>| with(&s, async |d| d.networks().map(Json)).await)
                .post(
                    async |State(s): State<Shared>, Json(req): Json<CreateNetwork>| {
                        with(&s, async |d| {
                            d.create_network(req)
                                .await
                                .map(|i| (StatusCode::CREATED, Json(i)))
                        })
                        .await
                    },
                ),
        )
        .route(
            "/v1/networks/{name}/connect",
            post(
                async |State(s): State<Shared>,
                       Path(n): Path<String>,
                       Json(req): Json<ConnectRequest>| {
                    with(&s, async |d| d.connect(&n, req).await.map(Json)).await
                },
            ),
        )
        .route(
            "/v1/networks/{name}/disconnect",
            post(
                async |State(s): State<Shared>,
                       Path(n): Path<String>,
                       Json(req): Json<DisconnectRequest>| {
                    with(&s, async |d| {
                        d.disconnect(&n, &req.endpoint).await.map(Json)
                    })
                    .await
                },
            ),
        )
        .route(
            "/v1/networks/prune",
            post(async |State(s): State<Shared>| {
                with(&s, async |d| d.prune_networks().await.map(Json)).await
            }),
        )
        .route(
            "/v1/networks/{name}",
            get(async |State(s): State<Shared>, Path(n): Path<String>| {
                with(&s, async |d| d.network(&n).map(Json)).await
            })
            .delete(async |State(s): State<Shared>, Path(n): Path<String>| {
                with(&s, async |d| {
                    d.remove_network(&n).await.map(|()| StatusCode::NO_CONTENT)
                })
                .await
            }),
        )
        .route(
            "/v1/stats",
            get(async |State(s): State<Shared>| {
                off_the_workers(move || s.readers.stats()).await.map(Json)
            }),
        )
        .route(
            "/v1/stats/{name}",
            get(async |State(s): State<Shared>, Path(n): Path<String>| {
                off_the_workers(move || s.readers.endpoint_stats(&n))
                    .await
                    .map(Json)
            }),
        )
        .route(
            "/v1/cni/add",
            post(async |State(s): State<Shared>, Json(req): Json<CniAdd>| {
                with(&s, async |d| d.cni_add(req).await.map(Json)).await
            }),
        )
        .route(
            "/v1/cni/del",
            post(
                async |State(s): State<Shared>, Json(key): Json<CniAttachmentKey>| {
                    with(&s, async |d| d.cni_del(&key).await.map(Json)).await
                },
            ),
        )
        .route(
            "/v1/cni/check",
            post(
                async |State(s): State<Shared>, Json(key): Json<CniAttachmentKey>| {
                    with(&s, async |d| d.cni_check(&key).await.map(Json)).await
                },
            ),
        )
        .route(
            "/v1/cni/gc",
            post(async |State(s): State<Shared>, Json(req): Json<CniGc>| {
                with(&s, async |d| d.cni_gc(&req).await.map(Json)).await
            }),
        )
        .route(
            "/v1/down",
            post(
                async move |State(s): State<Shared>| -> ApiResult<StatusCode> {
                    let daemon = s.daemon.lock().await.take().ok_or_else(gone)?;
                    // Blocking work, as every use case of the daemon.
                    let result = tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(daemon.down())
                    });
                    let _ = stop_tx.send(true);
                    result?;
                    Ok(StatusCode::NO_CONTENT)
                },
            ),
        )
        .with_state(state)
        .merge(
            Router::new()
                .route(
                    "/v1/monitor",
                    get(
                        async move |State(hub): State<Arc<Hub>>,
                                    Query(filter): Query<MonitorFilter>| {
                            if !monitored {
                                let what = "monitor";
                                return ApiError(Error::NeedsDatapath { what }).into_response();
                            }
                            Hub::stream(hub, filter).await.into_response()
                        },
                    ),
                )
                .with_state(hub.clone()),
        );
    info!(socket = %socket.display(), "API ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    serve_connections(listener, app, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("interrupted: stopping, data path stays"),
            _ = term.recv() => info!("terminated: stopping, data path stays"),
            _ = stop_rx.wait_for(|stop| *stop) => info!("down: everything removed"),
        }
        hub.stop();
    })
    .await;
    gc.abort();
    for task in [events, membership, metrics].into_iter().flatten() {
        task.abort();
    }
    Ok(())
}

/// Connections served at once; a client past them is told so at once.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's head, and to start the
/// next one on a connection kept open.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body read.
const BODY_LIMIT: usize = 8 << 20;
/// How long a refused client's request head is waited for, and its answer
/// may take to send: short, as each refusal holds a file meanwhile.
const REFUSAL_WAIT: Duration = Duration::from_millis(100);
/// How long requests still running at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `stop` completes, then lets requests
/// still running finish. Idle and slow clients are cut off after
/// [`HEAD_TIMEOUT`] and [`BODY_TIMEOUT`], and at most [`MAX_CONNECTIONS`]
/// are served at once: a client holding connections open cannot use up
/// the daemon's files.
async fn serve_connections<L: axum::serve::Listener>(
    mut listener: L,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let app = app.layer(axum::middleware::from_fn(read_body_in_time));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    let mut stop = std::pin::pin!(stop);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(io));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("API connection: {e}");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("API requests still running after {SHUTDOWN_GRACE:?}: stopping anyway");
    }
}

/// Tells a client past [`MAX_CONNECTIONS`] why it is not served: after
/// its request's head (a client still sending would take an early answer
/// for a broken connection), or [`REFUSAL_WAIT`] of waiting for it.
async fn refuse(mut io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::to_string(&ErrorBody {
        error: format!(
            "the daemon is serving {MAX_CONNECTIONS} API connections already; try again"
        ),
    })
    .expect("an error body serializes");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WAIT, io.write_all(answer.as_bytes())).await;
}

/// Reads a request's whole body within [`BODY_TIMEOUT`] before the
/// handler runs, so that a client sending it slowly, or never, does not
/// hold the daemon's lock or a connection for long.
async fn read_body_in_time(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let error =
        |status: StatusCode, error: String| (status, Json(ErrorBody { error })).into_response();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, bytes.into()))
                .await
        }
        Ok(Err(e)) => error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body (at most {BODY_LIMIT} bytes): {e}"),
        ),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        ),
    }
}

/// The OpenMetrics content type prometheus-client's text encoding is.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until aborted.
async fn serve_metrics(listener: tokio::net::TcpListener, state: Shared) {
    let app = Router::new()
        .route(
            "/metrics",
            get(async |State(s): State<Shared>| -> ApiResult<Response> {
                let handles = s.clone();
                let mut snapshot = off_the_workers(move || handles.readers.metrics()).await?;
                with(&s, async |d| d.cluster_metrics(&mut snapshot)).await?;
                Ok((
                    [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
                    metrics::render(&snapshot),
                )
                    .into_response())
            }),
        )
        .with_state(state);
    serve_connections(listener, app, std::future::pending()).await;
}
