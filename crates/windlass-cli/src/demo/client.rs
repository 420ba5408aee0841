//! The three ways the demo calls the upstream: no controls, naive retries, and Windlass.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use windlass::policy::{
    Backoff, Bulkhead, Cache, CircuitBreaker, Compose, Context, Deadline, ErrorClass, Hedge,
    Jitter, PolicyError, PolicyExt, RateLimiter, Retry, RetryBudget, Stack, Timeout,
};

/// A plain HTTP/1 client with a connection pool.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Builds the client every mode uses.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A failed HTTP call.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The server answered with a non-success status (and maybe `Retry-After`).
    Status(u16, Option<Duration>),
    /// The connection failed or was dropped.
    Transport(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(code, _) => write!(f, "HTTP {code}"),
            CallError::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

impl std::error::Error for CallError {}

/// How Windlass reads an HTTP failure.
pub fn classify(e: &CallError) -> ErrorClass {
    match e {
        CallError::Status(429 | 503, Some(after)) => ErrorClass::RetryAfter(*after),
        CallError::Status(code, _) if *code >= 500 || *code == 429 => ErrorClass::Transient,
        CallError::Status(_, _) => ErrorClass::Permanent,
        CallError::Transport(_) => ErrorClass::Transient,
    }
}

/// One GET, body read to the end.
pub async fn get(client: &HttpClient, uri: &Uri) -> Result<(), CallError> {
    let resp = client
        .get(uri.clone())
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    resp.into_body()
        .collect()
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(CallError::Status(status.as_u16(), retry_after))
    }
}

/// Naive retries: up to five attempts, a fixed 50 ms pause, no jitter, no budget, no
/// breaker, and `Retry-After` ignored: what many hand-written loops do.
pub async fn naive(client: &HttpClient, uri: &Uri, retries: &AtomicU64) -> Result<(), CallError> {
    let mut attempt = 1;
    loop {
        match get(client, uri).await {
            Ok(()) => return Ok(()),
            Err(_) if attempt < 5 => {
                attempt += 1;
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

type Attempts = Stack<Hedge, Stack<CircuitBreaker, Stack<RateLimiter, Stack<Bulkhead, Timeout>>>>;
type Pipeline = Stack<Deadline, Stack<Retry, Attempts>>;

/// Windlass: a cache with coalesced loads in front of deadline → retry → hedge → breaker →
/// rate limit → bulkhead → per-attempt timeout.
pub struct WindlassClient {
    policy: Arc<Pipeline>,
    breaker: CircuitBreaker,
    cache: Cache<u64, Result<(), PolicyError<CallError>>>,
    retries: Arc<AtomicU64>,
}

impl WindlassClient {
    /// Builds the pipeline for `concurrency` callers.
    pub fn new(concurrency: usize, seed: u64) -> anyhow::Result<Self> {
        let retries = Arc::new(AtomicU64::new(0));
        let counted = retries.clone();
        let breaker = CircuitBreaker::builder()
            .name("demo-upstream")
            .count_window(100)
            .minimum_calls(40)
            .failure_rate_threshold(0.7)
            .open_duration(Duration::from_millis(200))
            .permitted_in_half_open(5)
            .build()?;
        let retry = Retry::builder()
            .name("demo-retry")
            .max_attempts(10)
            .backoff(Backoff::exponential(Duration::from_millis(10)))
            .jitter(Jitter::DecorrelatedV2)
            .max_delay(Duration::from_millis(400))
            .budget(Arc::new(RetryBudget::new(
                Duration::from_secs(10),
                50,
                1.0,
            )?))
            .seed(seed)
            .on_retry(move |_| {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .build()?;
        let hedge = Hedge::builder()
            .name("demo-hedge")
            .percentile(0.95, 50, Duration::from_millis(50))
            .max_hedges(1)
            .build()?;
        let limiter = RateLimiter::builder()
            .name("demo-rate")
            .per_second(20_000)
            .burst(500)
            .max_wait(Duration::from_millis(100))
            .build()?;
        let bulkhead = Bulkhead::builder()
            .name("demo-bulkhead")
            .max_concurrent(concurrency.max(1) * 2)
            .max_queued(concurrency.max(1) * 2)
            .max_wait(Duration::from_millis(500))
            .build()?;
        let policy =
            Deadline::new(Duration::from_secs(4))?.then(retry.then(
                hedge.then(
                    breaker.clone().then(
                        limiter.then(bulkhead.then(Timeout::new(Duration::from_millis(300))?)),
                    ),
                ),
            ));
        let cache = Cache::builder()
            .max_capacity(100_000)
            .ttl_for(|r: &Result<(), PolicyError<CallError>>| {
                r.is_ok().then_some(Duration::from_secs(60))
            })
            .build()?;
        Ok(WindlassClient {
            policy: Arc::new(policy),
            breaker,
            cache,
            retries,
        })
    }

    /// Fetches `key` through the cache and the pipeline.
    pub async fn fetch(
        &self,
        client: &HttpClient,
        key: u64,
        uri: Uri,
    ) -> Result<(), PolicyError<CallError>> {
        let policy = self.policy.clone();
        let client = client.clone();
        self.cache
            .get_or_load(key, move || async move {
                policy
                    .call_with(Context::new(), &classify, |_| get(&client, &uri))
                    .await
            })
            .await
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Times the breaker opened.
    pub fn breaker_openings(&self) -> u64 {
        self.breaker.openings()
    }
}
