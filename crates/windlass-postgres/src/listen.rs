//! The `LISTEN` connection: turns other processes' enqueues into wake-ups.
//!
//! An enqueue `NOTIFY`s the store's channel in the same statement (or at the commit of the
//! caller's transaction). One connection per store listens and bumps the store's work signal
//! on every notification. If the connection drops, it reconnects with back-off and bumps the
//! signal once it is back, so a notification sent while it was away costs at most one extra
//! claim, never a stuck worker (fetchers also poll at their interval).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

pub(crate) async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    signal: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) {
    let bump = || signal.send_modify(|n| *n = n.wrapping_add(1));
    let mut retry_in = Duration::from_millis(50);
    loop {
        let session = async {
            let (client, mut connection) = config.connect(NoTls).await?;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let sql = format!("LISTEN {channel}");
            let listen = client.batch_execute(&sql);
            // The connection must be driven while the LISTEN runs.
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    r = &mut listen => { r?; break; }
                    m = messages.next() => match m {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    },
                }
            }
            retry_in = Duration::from_millis(50);
            bump();
            while let Some(m) = messages.next().await {
                if let AsyncMessage::Notification(_) = m? {
                    bump();
                }
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = session => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, retry_in = ?retry_in, "LISTEN connection lost; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry_in) => {}
        }
        retry_in = (retry_in * 2).min(Duration::from_secs(5));
    }
}
