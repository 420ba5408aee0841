//! `windlass demo pipeline`: the classic pipeline — fetch an image from a server, make a
//! thumbnail (real CPU work), upload it — run four ways, to show why each tool exists.
//!
//! 1. **sequential**: one item at a time. Correct, bounded, and slow: the CPU idles while
//!    waiting for the network and the network idles while computing.
//! 2. **unbounded parallel**: a task per item, all at once. Fast to write; in flight = every
//!    item, so memory and sockets grow with the input, and the CPU work runs on the async
//!    runtime's threads, stalling every task scheduled there.
//! 3. **bounded concurrency**: at most `limit` items in flight ([`map_bounded_unordered`]).
//!    Memory and sockets stay flat; the CPU work still blocks runtime threads.
//! 4. **streaming + offload**: fetches bounded, thumbnails on the [`Offload`] pool (the CPU
//!    work leaves the runtime; a full pool pushes back on the fetches), uploads bounded.
//!
//! Each stage reports wall time, the peak resident memory it added, and peak in-flight
//! items.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::measure::{self, InFlight};
use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use windlass::concurrency::map::{map_bounded_unordered, map_stream_bounded_unordered};
use windlass::concurrency::{Offload, Scope};

/// Image side in pixels (RGB).
pub const SIDE: usize = 128;
/// Thumbnail side in pixels.
pub const THUMB: usize = 32;

/// Settings for the pipeline demo.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Item counts to run every stage with.
    pub items: Vec<usize>,
    /// The in-flight limit for the bounded stages.
    pub limit: usize,
    /// Threads for the offload pool.
    pub cpu_threads: usize,
}

/// One stage's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: &'static str,
    /// Items processed.
    pub items: usize,
    /// Items that failed (connection errors under unbounded load, for example).
    pub failed: usize,
    /// Wall time in milliseconds.
    pub wall_ms: f64,
    /// Peak resident memory during the stage above the resident size at its start, in bytes
    /// (what the stage itself held at once: buffers, tasks, connections, client and server
    /// side; 0 without `/proc`).
    pub peak_memory_bytes: u64,
    /// Most items in flight at once.
    pub peak_in_flight: usize,
}

/// A deterministic test image for item `i`.
pub fn image(i: u64) -> Vec<u8> {
    let mut px = Vec::with_capacity(SIDE * SIDE * 3);
    for y in 0..SIDE as u64 {
        for x in 0..SIDE as u64 {
            px.push((x * 3 + i) as u8);
            px.push((y * 5 + i * 7) as u8);
            px.push(((x ^ y) + i) as u8);
        }
    }
    px
}

/// The CPU work: four 3x3 blur passes, then a 4x4 box downscale to 32x32.
pub fn thumbnail(rgb: &[u8]) -> Vec<u8> {
    let side = SIDE;
    let mut cur: Vec<u16> = rgb.iter().map(|v| u16::from(*v)).collect();
    let mut next = cur.clone();
    for _ in 0..4 {
        for y in 1..side - 1 {
            for x in 1..side - 1 {
                for c in 0..3 {
                    let at =
                        |dx: usize, dy: usize| cur[((y + dy - 1) * side + (x + dx - 1)) * 3 + c];
                    let sum = at(0, 0)
                        + 2 * at(1, 0)
                        + at(2, 0)
                        + 2 * at(0, 1)
                        + 4 * at(1, 1)
                        + 2 * at(2, 1)
                        + at(0, 2)
                        + 2 * at(1, 2)
                        + at(2, 2);
                    next[(y * side + x) * 3 + c] = sum / 16;
                }
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    let f = side / THUMB;
    let mut out = Vec::with_capacity(THUMB * THUMB * 3);
    for ty in 0..THUMB {
        for tx in 0..THUMB {
            for c in 0..3 {
                let mut sum = 0u32;
                for dy in 0..f {
                    for dx in 0..f {
                        sum += u32::from(cur[((ty * f + dy) * side + tx * f + dx) * 3 + c]);
                    }
                }
                out.push((sum / (f * f) as u32) as u8);
            }
        }
    }
    out
}

/// Uploads received, by image id.
pub type Uploads = Arc<std::sync::Mutex<std::collections::HashMap<u64, u32>>>;

/// The local image server: `GET /image/{i}` and `POST /upload/{i}`, each taking ~1 ms.
pub struct ImageServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// How many uploads it received for each image.
    pub uploads: Uploads,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ImageServer {
    /// Starts it on an ephemeral loopback port.
    pub async fn start() -> std::io::Result<ImageServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let uploads = Uploads::default();
        let counted = Arc::clone(&uploads);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counted = Arc::clone(&counted);
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| serve(req, Arc::clone(&counted)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(ImageServer {
            addr,
            uploads,
            task,
        })
    }
}

async fn serve(
    req: Request<Incoming>,
    uploads: Uploads,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let id: u64 = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut resp = Response::new(Full::new(Bytes::new()));
    match *req.method() {
        Method::GET => *resp.body_mut() = Full::new(Bytes::from(image(id))),
        Method::POST => {
            let _ = req.into_body().collect().await;
            *uploads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(id)
                .or_default() += 1;
            *resp.status_mut() = StatusCode::CREATED;
        }
        _ => *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED,
    }
    Ok(resp)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP client of the image server.
#[derive(Clone)]
pub(crate) struct Io {
    client: HttpClient,
    base: Arc<str>,
}

impl Io {
    /// A client of the server at `base` (`http://host:port`).
    pub(crate) fn new(base: &str) -> Io {
        Io {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            base: base.into(),
        }
    }

    pub(crate) async fn fetch(&self, i: u64) -> anyhow::Result<Bytes> {
        let req = Request::get(format!("{}/image/{i}", self.base)).body(Full::new(Bytes::new()))?;
        let resp = self.client.request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "fetch {i}: HTTP {}",
            resp.status()
        );
        Ok(resp.into_body().collect().await?.to_bytes())
    }

    pub(crate) async fn upload(&self, i: u64, thumb: Vec<u8>) -> anyhow::Result<()> {
        let req = Request::post(format!("{}/upload/{i}", self.base))
            .body(Full::new(Bytes::from(thumb)))?;
        let resp = self.client.request(req).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "upload {i}: HTTP {}",
            resp.status()
        );
        resp.into_body().collect().await?;
        Ok(())
    }

    /// Fetch, thumbnail on the calling thread, upload.
    async fn process_inline(&self, i: u64) -> anyhow::Result<()> {
        let img = self.fetch(i).await?;
        let thumb = thumbnail(&img);
        self.upload(i, thumb).await
    }
}

/// Runs the four stages for each item count.
pub async fn run(opts: &PipelineOptions) -> anyhow::Result<Vec<StageReport>> {
    anyhow::ensure!(opts.limit >= 1, "--limit must be at least 1");
    anyhow::ensure!(opts.cpu_threads >= 1, "--cpu-threads must be at least 1");
    anyhow::ensure!(
        opts.items.iter().all(|n| *n >= 1),
        "--items must be at least 1"
    );
    let server = ImageServer::start()
        .await
        .context("starting the image server")?;
    let mut reports = Vec::new();
    for &n in &opts.items {
        for stage in ["sequential", "unbounded", "bounded", "streaming+offload"] {
            let io = Io::new(&format!("http://{}", server.addr));
            reports.push(run_stage(stage, n, opts, io).await?);
            // Let the server close the stage's connections before the next stage measures.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(reports)
}

async fn run_stage(
    stage: &'static str,
    n: usize,
    opts: &PipelineOptions,
    io: Io,
) -> anyhow::Result<StageReport> {
    let probe = InFlight::default();
    let baseline = measure::resident_bytes();
    measure::reset_peak();
    let started = Instant::now();
    let items = 0..n as u64;
    let failed = match stage {
        "sequential" => {
            let mut failed = 0;
            for i in items {
                failed += usize::from(probe.track(io.process_inline(i)).await.is_err());
            }
            failed
        }
        "unbounded" => {
            let mut scope = Scope::new();
            for i in items {
                let (io, probe) = (io.clone(), probe.clone());
                scope.spawn(async move {
                    Ok::<_, Infallible>(probe.track(io.process_inline(i)).await.is_err())
                });
            }
            scope
                .join_settled()
                .await
                .into_iter()
                .filter(|r| !matches!(r, Ok(false)))
                .count()
        }
        "bounded" => {
            map_bounded_unordered(items, opts.limit, |i| probe.track(io.process_inline(i)))?
                .filter(|r| std::future::ready(r.is_err()))
                .count()
                .await
        }
        _ => {
            let pool = Offload::new("thumbnails", opts.cpu_threads, opts.cpu_threads * 2)?;
            // Fetch at most `limit` at once; each fetched image waits for a CPU thread
            // (backpressure holds further fetches back), then is uploaded.
            let fetched = map_bounded_unordered(items, opts.limit, |i| {
                let (io, guard) = (io.clone(), probe.enter());
                async move { (i, io.fetch(i).await, guard) }
            })?;
            let thumbs =
                map_stream_bounded_unordered(fetched, opts.cpu_threads * 2, |(i, img, guard)| {
                    let pool = pool.clone();
                    async move {
                        let img = img?;
                        let thumb = pool.run(move || thumbnail(&img)).await?;
                        Ok::<_, anyhow::Error>((i, thumb, guard))
                    }
                })?;
            map_stream_bounded_unordered(thumbs, opts.limit, |r| {
                let io = io.clone();
                async move {
                    let (i, thumb, _guard) = r?;
                    io.upload(i, thumb).await
                }
            })?
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await
        }
    };
    Ok(StageReport {
        stage,
        items: n,
        failed,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
        peak_memory_bytes: measure::peak_resident_bytes().saturating_sub(baseline),
        peak_in_flight: probe.peak(),
    })
}

/// Renders the table.
pub fn table(reports: &[StageReport]) -> String {
    let mut out = format!(
        "\n{:<18} {:>7} {:>7} {:>10} {:>10} {:>10}\n",
        "stage", "items", "failed", "wall ms", "+peak MiB", "in flight"
    );
    for r in reports {
        out.push_str(&format!(
            "{:<18} {:>7} {:>7} {:>10.0} {:>10.1} {:>10}\n",
            r.stage,
            r.items,
            r.failed,
            r.wall_ms,
            r.peak_memory_bytes as f64 / (1024.0 * 1024.0),
            r.peak_in_flight
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_is_a_real_downscale() {
        let img = image(3);
        assert_eq!(img.len(), SIDE * SIDE * 3);
        let t = thumbnail(&img);
        assert_eq!(t.len(), THUMB * THUMB * 3);
        assert_eq!(t, thumbnail(&img), "deterministic");
        // A flat image stays flat.
        let flat = vec![100u8; SIDE * SIDE * 3];
        assert!(thumbnail(&flat).iter().all(|v| *v == 100));
    }
}
