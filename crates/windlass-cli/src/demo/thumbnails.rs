//! `windlass demo thumbnails`: the thumbnail pipeline of `demo pipeline` as a **durable
//! workflow**, killed mid-way and resumed.
//!
//! One run processes every image: a step per image (`image[<id>]`: fetch it, make the
//! thumbnail on the CPU offload pool, upload it), run with bounded fan-out (`ctx.all`, at
//! most `--limit` at once). The run is started, then a **separate worker process** (this
//! binary, `--worker-for <db>`) drives it and is killed with SIGKILL once `--kill-after`
//! images are uploaded. A worker in this process then takes the run over when the dead
//! process's lease expires and finishes it from its journal: the images already journaled
//! are not processed again. Only the images in flight at the kill (at most `--limit`) are
//! uploaded twice — a step's effect is at-least-once, its result exactly-once.
//!
//! Why one step per image and not three (fetch, thumbnail, upload): a step's output is
//! journaled, so a `fetch` step would store every image's bytes in the database only for
//! the `thumbnail` step to read them back. An image's three stages are one step, retried as
//! one; what the journal keeps per image is the thumbnail's size. (Work whose stages must
//! each survive a crash journals a reference between them, e.g. an object-store key.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use windlass::concurrency::Offload;
use windlass::policy::{Backoff, Retry};
use windlass_flow::{FlowContext, FlowError, Flows, Workflow};
use windlass_queue::{Queue, Worker, WorkerConfig, WorkerHandle};
use windlass_sqlite::SqliteStore;

use super::pipeline::{ImageServer, Io, thumbnail};

/// Settings for the demo.
#[derive(Debug, Clone)]
pub struct ThumbnailOptions {
    /// Images to process.
    pub items: usize,
    /// Images in flight at once.
    pub limit: usize,
    /// Kill the worker process after this many images were uploaded (0: no kill).
    pub kill_after: usize,
    /// Keep the run in this SQLite file (default: a fresh temporary one).
    pub db: Option<PathBuf>,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
pub struct ThumbnailReport {
    /// Images to process.
    pub items: usize,
    /// Images in flight at once.
    pub limit: usize,
    /// Whether the worker process was killed mid-run.
    pub killed: bool,
    /// Images uploaded when it was killed.
    pub uploaded_before_kill: usize,
    /// Images the finished run reports.
    pub images_done: usize,
    /// Distinct images the server received.
    pub images_uploaded: usize,
    /// Uploads the server received in all.
    pub uploads_total: u64,
    /// Images uploaded more than once (in flight at the kill).
    pub uploaded_twice: usize,
    /// Milliseconds from the kill to the run's end (lease expiry, takeover, the rest).
    pub resume_ms: f64,
    /// Milliseconds in all.
    pub wall_ms: f64,
}

/// The run's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    /// The image server (`http://host:port`).
    pub base: String,
    /// The images.
    pub images: Vec<u64>,
    /// Images in flight at once.
    pub limit: usize,
}

/// The workflow: one step per image, bounded fan-out.
pub struct Thumbnails {
    pool: Offload,
}

impl Thumbnails {
    fn new() -> anyhow::Result<Thumbnails> {
        Ok(Thumbnails {
            pool: Offload::new("thumbnails", 2, 8)?,
        })
    }
}

impl Workflow for Thumbnails {
    const KIND: &'static str = "thumbnails";
    type Input = Batch;
    type Output = usize;
    async fn run(&self, ctx: FlowContext, batch: Batch) -> Result<usize, FlowError> {
        let io = Io::new(&batch.base);
        let retry = Retry::builder()
            .name("thumbnail")
            .max_attempts(3)
            .backoff(Backoff::exponential(Duration::from_millis(20)))
            .build()
            .map_err(FlowError::failed)?;
        let mut steps = Vec::with_capacity(batch.images.len());
        for &i in &batch.images {
            let (io, pool) = (io.clone(), self.pool.clone());
            let step = ctx
                .step("image", move || {
                    let (io, pool) = (io.clone(), pool.clone());
                    async move {
                        let image = io.fetch(i).await.map_err(|e| e.to_string())?;
                        let thumb = pool
                            .run(move || thumbnail(&image))
                            .await
                            .map_err(|e| e.to_string())?;
                        let bytes = thumb.len();
                        io.upload(i, thumb).await.map_err(|e| e.to_string())?;
                        Ok::<_, String>(bytes)
                    }
                })
                .key(i)
                .retry(retry.clone());
            steps.push(step);
        }
        let sizes: Vec<usize> = ctx.all(batch.limit, steps).await?;
        Ok(sizes.len())
    }
}

fn flows(queue: &Queue<SqliteStore>) -> anyhow::Result<Flows<SqliteStore>> {
    Ok(Flows::builder(queue).register(Thumbnails::new()?).build()?)
}

/// A worker of the flows queue with a short lease (1 s), so a killed worker's run is taken
/// over quickly.
async fn worker(
    queue: &Queue<SqliteStore>,
    flows: &Flows<SqliteStore>,
) -> anyhow::Result<WorkerHandle> {
    Ok(Worker::builder(queue)
        .register(flows.driver())
        .config(WorkerConfig {
            queues: vec![flows.queue_name().to_owned()],
            lease: Duration::from_secs(1),
            heartbeat: Duration::from_millis(250),
            poll: Duration::from_millis(50),
            rescue_every: Duration::from_millis(100),
            ..WorkerConfig::default()
        })
        .build()?
        .start()
        .await?)
}

/// The worker process (`--worker-for <db>`): drives runs in `db` until killed.
pub async fn serve_worker(db: &Path) -> anyhow::Result<()> {
    let store = SqliteStore::open(db)
        .await
        .with_context(|| format!("opening {}", db.display()))?;
    let queue = Queue::new(store);
    let flows = flows(&queue)?;
    let _worker = worker(&queue, &flows).await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Runs the demo.
pub async fn run(opts: &ThumbnailOptions) -> anyhow::Result<ThumbnailReport> {
    anyhow::ensure!(opts.items >= 1, "--items must be at least 1");
    anyhow::ensure!(opts.limit >= 1, "--limit must be at least 1");
    anyhow::ensure!(
        opts.kill_after < opts.items,
        "--kill-after must be below --items"
    );
    let started = Instant::now();
    let server = ImageServer::start()
        .await
        .context("starting the image server")?;
    let path = match &opts.db {
        Some(p) => p.clone(),
        None => super::temp_db("thumbnails")?,
    };
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let queue = Queue::new(store);
    let flows = flows(&queue)?;
    let batch = Batch {
        base: format!("http://{}", server.addr),
        images: (0..opts.items as u64).collect(),
        limit: opts.limit,
    };
    let id = format!("thumbnails-{}", std::process::id());
    let run = flows.start::<Thumbnails>(id, &batch).await?;
    let uploaded = || {
        server
            .uploads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    };
    let (mut killed, mut uploaded_before_kill) = (false, 0);
    if opts.kill_after > 0 {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["demo", "thumbnails", "--worker-for"])
            .arg(&path)
            .kill_on_drop(true)
            .spawn()
            .context("starting the worker process")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while uploaded() < opts.kill_after {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the worker process uploaded {} of {} images before the deadline",
                uploaded(),
                opts.kill_after
            );
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the worker process exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // SIGKILL: no shutdown, no word to the database; its lease stays behind.
        child.kill().await.context("killing the worker process")?;
        killed = true;
        uploaded_before_kill = uploaded();
    }
    let killed_at = Instant::now();
    let worker = worker(&queue, &flows).await?;
    let done = run
        .result(Duration::from_secs(300), Duration::from_millis(20))
        .await
        .context("waiting for the run")?;
    worker.shutdown(Duration::from_secs(5)).await;
    let uploads = server
        .uploads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(ThumbnailReport {
        items: opts.items,
        limit: opts.limit,
        killed,
        uploaded_before_kill,
        images_done: done,
        images_uploaded: uploads.len(),
        uploads_total: uploads.values().map(|n| u64::from(*n)).sum(),
        uploaded_twice: uploads.values().filter(|n| **n > 1).count(),
        resume_ms: killed_at.elapsed().as_secs_f64() * 1000.0,
        wall_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The report as text.
pub fn story(r: &ThumbnailReport) -> String {
    let mut s = format!(
        "Thumbnail pipeline as a durable workflow: {} images, at most {} in flight, one journaled step per image.\n",
        r.items, r.limit
    );
    if r.killed {
        s.push_str(&format!(
            "A worker process drove the run and was killed (SIGKILL) after {} images were uploaded.\n\
             A worker here took the run over when its lease expired and finished it in {:.0} ms.\n",
            r.uploaded_before_kill, r.resume_ms
        ));
    }
    s.push_str(&format!(
        "Run result: {} images. Server: {} distinct images, {} uploads; {} uploaded twice (in flight at the kill; at most {}).\n",
        r.images_done, r.images_uploaded, r.uploads_total, r.uploaded_twice, r.limit
    ));
    s.push_str("The images journaled before the kill were not processed again.\n");
    s
}
