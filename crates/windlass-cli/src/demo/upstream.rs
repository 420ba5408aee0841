//! The fault-injecting upstream: a local HTTP server on loopback that misbehaves the way
//! real dependencies do, reproducibly (seeded).
//!
//! Per request, drawn from the seed and the request's sequence number: a share of `503`s,
//! long-tailed (Pareto) latency, and a few requests that hang and then drop the connection.
//! On the clock since the phase began: short bursts of `429 Too Many Requests` with
//! `Retry-After`, and one short full outage where everything is `503`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How unreliable the upstream is.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultProfile {
    /// A healthy service: 1% errors, short tail, no outage.
    Calm,
    /// The showdown default: ~30% 5xx, long tail, ~6% hangs, 429 bursts, a 500 ms outage
    /// 1.5 s in.
    Flaky,
    /// Worse: ~45% 5xx, ~8% hangs, longer outage.
    Storm,
}

/// The numbers behind a profile.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Share of requests answered `503` at once.
    pub error_rate: f64,
    /// Share of requests that hang for `hang_for`, then lose their connection.
    pub hang_rate: f64,
    /// How long a hanging request is held.
    pub hang_for: Duration,
    /// Pareto latency: minimum.
    pub latency_min: Duration,
    /// Pareto shape (smaller = longer tail).
    pub latency_alpha: f64,
    /// Every `burst_every`, answer `429` for `burst_len`, starting `burst_offset` in.
    pub burst_every: Duration,
    /// Length of each 429 burst.
    pub burst_len: Duration,
    /// When the first burst starts.
    pub burst_offset: Duration,
    /// The full outage: from, to (since the phase began).
    pub outage: (Duration, Duration),
}

impl FaultProfile {
    /// The profile's numbers.
    pub fn faults(self) -> Faults {
        let ms = Duration::from_millis;
        match self {
            FaultProfile::Calm => Faults {
                error_rate: 0.01,
                hang_rate: 0.0,
                hang_for: ms(0),
                latency_min: ms(2),
                latency_alpha: 3.0,
                burst_every: Duration::from_secs(3600),
                burst_len: ms(0),
                burst_offset: Duration::from_secs(3600),
                outage: (ms(0), ms(0)),
            },
            FaultProfile::Flaky => Faults {
                error_rate: 0.30,
                hang_rate: 0.06,
                hang_for: ms(6000),
                latency_min: ms(2),
                latency_alpha: 1.5,
                burst_every: ms(2000),
                burst_len: ms(80),
                burst_offset: ms(700),
                outage: (ms(1500), ms(2000)),
            },
            FaultProfile::Storm => Faults {
                error_rate: 0.45,
                hang_rate: 0.08,
                hang_for: ms(4000),
                latency_min: ms(3),
                latency_alpha: 1.2,
                burst_every: ms(800),
                burst_len: ms(150),
                burst_offset: ms(200),
                outage: (ms(500), ms(1500)),
            },
        }
    }
}

/// What the upstream decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// `200` after the latency.
    Ok(Duration),
    /// `503` after the latency.
    Error(Duration),
    /// `429` with `Retry-After` (whole seconds, as HTTP has it) at once.
    TooMany(u64),
    /// Hold the request, then drop the connection.
    Hang(Duration),
}

/// Decides a request's fate: pure, so it is testable and reproducible.
pub fn fate(f: &Faults, seed: u64, seq: u64, since_start: Duration) -> Fate {
    let mut rng = fastrand::Rng::with_seed(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let u = rng.f64();
    let latency = {
        // Pareto: min * U^(-1/alpha), capped at 2 s.
        let v = f.latency_min.as_secs_f64() * (1.0 - rng.f64()).powf(-1.0 / f.latency_alpha);
        Duration::from_secs_f64(v.min(2.0))
    };
    if since_start >= f.outage.0 && since_start < f.outage.1 {
        return Fate::Error(Duration::from_millis(1));
    }
    if since_start >= f.burst_offset {
        let into = (since_start - f.burst_offset).as_nanos() % f.burst_every.as_nanos().max(1);
        if into < f.burst_len.as_nanos() {
            return Fate::TooMany(1);
        }
    }
    if u < f.hang_rate {
        Fate::Hang(f.hang_for)
    } else if u < f.hang_rate + f.error_rate {
        Fate::Error(latency / 4)
    } else {
        Fate::Ok(latency)
    }
}

/// Counters the demo reads per phase.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Requests received.
    pub calls: AtomicU64,
}

struct State {
    faults: Faults,
    seed: u64,
    seq: AtomicU64,
    phase_start: Mutex<Instant>,
    stats: Arc<UpstreamStats>,
}

/// A running upstream.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts the server on an ephemeral loopback port.
    pub async fn start(profile: FaultProfile, seed: u64) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            faults: profile.faults(),
            seed,
            seq: AtomicU64::new(0),
            phase_start: Mutex::new(Instant::now()),
            stats: Arc::new(UpstreamStats::default()),
        });
        let st = state.clone();
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                connections.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    // A connection ends with an error when a hang drops it: expected here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Upstream {
            addr,
            state,
            server,
        })
    }

    /// Starts a new phase: the fault timeline restarts and the counters reset.
    pub async fn begin_phase(&self) {
        *self.state.phase_start.lock().await = Instant::now();
        self.state.stats.calls.store(0, Ordering::SeqCst);
        self.state.seq.store(0, Ordering::SeqCst);
    }

    /// Requests received in this phase.
    pub fn calls(&self) -> u64 {
        self.state.stats.calls.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault injector")
    }
}

impl std::error::Error for Dropped {}

async fn handle(st: Arc<State>, _req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
    st.stats.calls.fetch_add(1, Ordering::Relaxed);
    let seq = st.seq.fetch_add(1, Ordering::Relaxed);
    let since = st.phase_start.lock().await.elapsed();
    let reply = |code: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = code;
        r
    };
    match fate(&st.faults, st.seed, seq, since) {
        Fate::Ok(lat) => {
            tokio::time::sleep(lat).await;
            Ok(reply(StatusCode::OK, "{\"ok\":true}"))
        }
        Fate::Error(lat) => {
            tokio::time::sleep(lat).await;
            Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "unavailable"))
        }
        Fate::TooMany(secs) => {
            let mut r = reply(StatusCode::TOO_MANY_REQUESTS, "slow down");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            Ok(r)
        }
        Fate::Hang(d) => {
            tokio::time::sleep(d).await;
            Err(Dropped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flaky_profile_mix_matches_its_description() {
        let f = FaultProfile::Flaky.faults();
        let (mut ok, mut err, mut hang) = (0, 0, 0);
        // Outside the outage and the bursts.
        let t = Duration::from_millis(200);
        for seq in 0..20_000 {
            match fate(&f, 7, seq, t) {
                Fate::Ok(_) => ok += 1,
                Fate::Error(_) => err += 1,
                Fate::Hang(_) => hang += 1,
                Fate::TooMany(_) => unreachable!("no burst at 200 ms"),
            }
        }
        let share = |n: i32| f64::from(n) / 20_000.0;
        assert!((share(err) - 0.30).abs() < 0.02, "errors {}", share(err));
        assert!((share(hang) - 0.06).abs() < 0.01, "hangs {}", share(hang));
        assert!(ok > 0);
        assert_eq!(
            fate(&f, 7, 1, Duration::from_millis(1700)),
            Fate::Error(Duration::from_millis(1))
        );
        assert_eq!(
            fate(&f, 7, 1, Duration::from_millis(2750)),
            Fate::TooMany(1)
        );
        // Seeded: the same inputs give the same fate.
        assert_eq!(fate(&f, 9, 42, t), fate(&f, 9, 42, t));
    }
}
