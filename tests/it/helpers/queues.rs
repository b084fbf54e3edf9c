//! What tests read of queues and records, shared by [`super::TestApp`] and [`super::stack::Stack`]. Every storage
//! error fails the test; only "the queue (or container) does not exist" reads as empty, so a check of "nothing
//! there" cannot pass because Azurite refused the request.

use blob_batch_monitor::jobs::record::JobRecord;
use blob_batch_monitor::storage::{MessageEncoding, StorageClient, StorageError};
use devstack::storage_ops::QueueOps;

/// The poison queues a run can write: the app's own, and the host's for blob triggers.
pub const POISON_QUEUES: [&str; 2] = ["monitorjobs-poison", "webjobs-blobtrigger-poison"];

fn missing(e: &StorageError) -> bool {
    matches!(e.code(), Some("QueueNotFound" | "ContainerNotFound"))
}

/// The decoded texts of the visible messages of `queue` (up to 32).
pub async fn peek(storage: &StorageClient, queue: &str) -> Vec<String> {
    match storage.peek_messages(queue, 32).await {
        Ok(ms) => ms
            .iter()
            .map(|m| {
                let raw = MessageEncoding::Base64.decode(&m.message_text).expect("a base64 message");
                String::from_utf8(raw).expect("a UTF-8 message")
            })
            .collect(),
        Err(e) if missing(&e) => Vec::new(),
        Err(e) => panic!("peek {queue}: {e}"),
    }
}

/// How many messages `queue` holds, invisible (delayed) ones included.
pub async fn count(storage: &StorageClient, queue: &str) -> u64 {
    match storage.approximate_message_count(queue).await {
        Ok(n) => n,
        Err(e) if missing(&e) => 0,
        Err(e) => panic!("count the messages of {queue}: {e}"),
    }
}

/// Asserts that no poison queue holds a message.
pub async fn assert_no_poison(storage: &StorageClient) {
    for queue in POISON_QUEUES {
        let held = count(storage, queue).await;
        assert_eq!(held, 0, "{queue} holds {held} messages: {:?}", peek(storage, queue).await);
    }
}

/// Every job record of the account, parsed.
pub async fn records(storage: &StorageClient) -> Vec<JobRecord> {
    let items = match storage.list_all_blobs("batch-records", None).await {
        Ok(items) => items,
        Err(e) if missing(&e) => return Vec::new(),
        Err(e) => panic!("list the job records: {e}"),
    };
    let mut out = Vec::new();
    for item in items {
        let blob = storage.get_blob("batch-records", &item.name).await.expect("read a job record").expect("listed");
        out.push(serde_json::from_slice(&blob.content).expect("a job record"));
    }
    out
}
