//! Queue triggers as the Storage extension runs them (functions-protocol.md §4): receive with a lease, pass the real
//! `DequeueCount`, delete on success, reappear after `visibilityTimeout` on failure, go to `<queue>-poison` at
//! `maxDequeueCount` (or at once when undecodable). At most `batchSize + newBatchThreshold` run at once; polling
//! backs off to `maxPollingInterval` when idle and is woken when this host writes to the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blob_batch_monitor::storage::StorageClient;

use crate::storage_ops::{QueueMessage, QueueOps};
use tokio::task::JoinHandle;

use super::app::{Binding, Function};
use super::envelope::{iso_from_http_date, queue_envelope, QueueInfo};
use super::Ctx;

/// The shortest polling interval, right after messages were found.
const MIN_POLL: Duration = Duration::from_millis(100);

pub(super) fn spawn(ctx: Arc<Ctx>, function: Function, trigger: Binding) -> anyhow::Result<JoinHandle<()>> {
    let queue = trigger
        .queue_name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}: queueTrigger without queueName", function.name))?;
    let account = ctx.account(&trigger.connection)?.clone();
    Ok(tokio::spawn(listen(ctx, function, trigger, queue, account)))
}

async fn listen(ctx: Arc<Ctx>, function: Function, trigger: Binding, queue: String, account: StorageClient) {
    let host = ctx.app.host.clone();
    let wakeup = ctx.wakeup(&trigger.connection, &queue);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut delay = MIN_POLL;
    let _ = account.create_queue(&queue).await;
    loop {
        let mut got = 0;
        if in_flight.load(Ordering::SeqCst) <= host.new_batch_threshold {
            match account.get_messages(&queue, host.batch_size as u8, ctx.options.lease).await {
                Ok(messages) => {
                    got = messages.len();
                    for m in messages {
                        in_flight.fetch_add(1, Ordering::SeqCst);
                        let (ctx, f, t, q, a, n) = (
                            ctx.clone(),
                            function.clone(),
                            trigger.clone(),
                            queue.clone(),
                            account.clone(),
                            in_flight.clone(),
                        );
                        tokio::spawn(async move {
                            process(&ctx, &f, &t, &q, &a, m).await;
                            n.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "host", "{}: receiving from {queue} failed: {e}", function.name)
                }
            }
        }
        delay = if got > 0 { MIN_POLL } else { (delay * 2).min(host.max_polling_interval) };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wakeup.notified() => { delay = MIN_POLL; }
        }
    }
}

async fn process(
    ctx: &Ctx,
    function: &Function,
    trigger: &Binding,
    queue: &str,
    account: &StorageClient,
    m: QueueMessage,
) {
    let host = &ctx.app.host;
    let pop = m.pop_receipt.clone().unwrap_or_default();
    let Some(text) = host.message_encoding.decode(&m.message_text) else {
        return to_poison(ctx, function, queue, account, &m, "the message is not valid base64 (messageEncoding)").await;
    };
    if m.dequeue_count > host.max_dequeue_count {
        let why = format!("dequeue count {} is over maxDequeueCount", m.dequeue_count);
        return to_poison(ctx, function, queue, account, &m, &why).await;
    }
    let binary = trigger.data_type.as_deref().is_some_and(|d| d.eq_ignore_ascii_case("binary"));
    let insertion = iso_from_http_date(m.insertion_time.as_deref().unwrap_or_default());
    let expiration = iso_from_http_date(m.expiration_time.as_deref().unwrap_or_default());
    let next_visible = iso_from_http_date(m.time_next_visible.as_deref().unwrap_or_default());
    let info = QueueInfo {
        id: &m.message_id,
        pop_receipt: &pop,
        dequeue_count: m.dequeue_count,
        insertion_time: &insertion,
        expiration_time: &expiration,
        next_visible_time: &next_visible,
    };
    let body = queue_envelope(&function.name, &trigger.name, &text, binary, &info);
    let label = format!("queue {queue} #{} try {}", short(&m.message_id), m.dequeue_count);
    let outcome = ctx.invoke(function, label, body).await;
    if outcome.succeeded() {
        if let Err(e) = account.delete_message(queue, &m.message_id, &pop).await {
            tracing::warn!(target: "host", "deleting message {} failed: {e}", m.message_id);
        }
    } else if m.dequeue_count >= host.max_dequeue_count {
        to_poison(ctx, function, queue, account, &m, &format!("failed {} times", m.dequeue_count)).await;
    } else if let Err(e) = account.update_visibility(queue, &m.message_id, &pop, host.visibility_timeout).await {
        tracing::warn!(target: "host", "releasing message {} failed: {e}", m.message_id);
    }
}

/// Copies the stored message to `<queue>-poison` as is, then deletes the original.
async fn to_poison(ctx: &Ctx, function: &Function, queue: &str, account: &StorageClient, m: &QueueMessage, why: &str) {
    let poison = format!("{queue}-poison");
    tracing::warn!(target: "host", "{}: message {} → {poison}: {why}", function.name, m.message_id);
    let raw_text = m.message_text.as_bytes();
    // put_message encodes; the stored text is already encoded, so copy it with no further encoding.
    let stored = ctx.app.host.message_encoding.decode(&m.message_text);
    let result = match stored {
        Some(raw) => account.put_message(&poison, &raw, ctx.app.host.message_encoding, Duration::ZERO).await,
        None => {
            account
                .put_message(&poison, raw_text, blob_batch_monitor::storage::MessageEncoding::None, Duration::ZERO)
                .await
        }
    };
    if result.is_ok() {
        let _ = account.delete_message(queue, &m.message_id, m.pop_receipt.as_deref().unwrap_or_default()).await;
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}
