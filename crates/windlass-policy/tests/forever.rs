//! `Duration::MAX` is the natural way to say "no limit". Every builder that takes a
//! duration accepts it and means "never"; no call panics on it (regression: every one of
//! these panicked adding the duration to an `Instant`).

#![allow(clippy::unwrap_used)] // a test file

use std::time::Duration;

use windlass_policy::{
    Bulkhead, CircuitBreaker, Compose, Deadline, Hedge, Keyed, Pipeline, PolicyError, PolicyExt,
    RateLimiter, Retry, Timeout,
};

const FOREVER: Duration = Duration::MAX;

async fn ok() -> Result<u32, &'static str> {
    Ok(1)
}

#[tokio::test(start_paused = true)]
async fn timeout_and_deadline_of_forever_never_fire() {
    assert_eq!(Timeout::new(FOREVER).unwrap().call(ok).await.unwrap(), 1);
    assert_eq!(Deadline::new(FOREVER).unwrap().call(ok).await.unwrap(), 1);
    let nested = Deadline::new(FOREVER)
        .unwrap()
        .then(Timeout::new(FOREVER).unwrap());
    let slow = || async {
        tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
        Ok::<_, &str>(2)
    };
    assert_eq!(
        nested.call(slow).await.unwrap(),
        2,
        "a year is less than forever"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_with_a_forever_deadline_and_cap_retries() {
    let retry = Retry::builder()
        .deadline(FOREVER)
        .max_delay(FOREVER)
        .max_attempts(3)
        .build()
        .unwrap();
    let out: Result<(), _> = retry.call(|| async { Err("flaky") }).await;
    assert!(matches!(
        out,
        Err(PolicyError::RetriesExhausted { attempts: 3, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn pipeline_with_forever_stages_runs() {
    let p = Pipeline::<u32, &str>::builder()
        .deadline(Deadline::new(FOREVER).unwrap())
        .retry(Retry::builder().deadline(FOREVER).build().unwrap())
        .timeout(Timeout::new(FOREVER).unwrap())
        .build();
    assert_eq!(p.call(ok).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_and_rate_limiter_may_wait_forever() {
    let bulkhead = Bulkhead::builder()
        .max_concurrent(1)
        .max_queued(1)
        .max_wait(FOREVER)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let waiter = bulkhead.call(ok);
    tokio::pin!(waiter);
    assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(
        futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none(),
        "still waiting"
    );
    drop(held);
    assert_eq!(waiter.await.unwrap(), 1);

    let limiter = RateLimiter::builder()
        .per_second(1)
        .burst(1)
        .max_wait(FOREVER)
        .build()
        .unwrap();
    assert_eq!(limiter.call(ok).await.unwrap(), 1);
    assert_eq!(
        limiter.call(ok).await.unwrap(),
        1,
        "waited for the next permit"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_open_forever_stays_open_and_says_so() {
    let breaker = CircuitBreaker::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(FOREVER)
        .max_wait_in_half_open(FOREVER)
        .slow_call_duration(FOREVER)
        .slow_call_rate_threshold(0.5)
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = breaker.call(|| async { Err::<(), _>("down") }).await;
    }
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    match breaker.call(ok).await {
        Err(PolicyError::Rejected(r)) => assert!(r.to_string().contains("is open"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn hedge_delay_of_forever_never_hedges() {
    let hedge = Hedge::builder().delay(FOREVER).build().unwrap();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let slow = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, &str>(3)
        }
    };
    assert_eq!(hedge.call(slow).await.unwrap(), 3);
    assert_eq!(calls.into_inner(), 1, "no hedge was launched");
}

#[tokio::test(start_paused = true)]
async fn keyed_idle_timeout_of_forever_keeps_keys() {
    let keyed = Keyed::builder()
        .idle_timeout(FOREVER)
        .build(|_: &u32| Timeout::new(Duration::from_secs(1)))
        .unwrap();
    keyed.get(&1).unwrap();
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    keyed.get(&2).unwrap();
    assert_eq!(keyed.len(), 2);
}
