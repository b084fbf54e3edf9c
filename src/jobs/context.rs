//! The job core's context: the clients and the settings that every step of the lifecycle uses, built once by the app
//! around it (as rust-lang/bors passes one `BorsContext`). Nothing under `jobs/` sees more of the app than this.

use std::sync::Arc;
use std::time::Duration;

use crate::batch_api::BatchClient;
use crate::storage::{MessageEncoding, StorageClient, StorageError};

use super::policy::Policy;
use super::records::RecordStore;

/// What the lifecycle works with.
#[derive(Clone, Debug)]
pub struct Jobs {
    pub batch: BatchClient,
    /// The account of the trigger, the app's queues, the records and the results.
    pub storage: StorageClient,
    pub records: RecordStore,
    pub settings: Arc<JobSettings>,
}

/// The settings the lifecycle depends on.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// `BATCH_OUTPUT_CONTAINER`: where the service writes results, in the input blob's account.
    pub output_container: String,
    /// `BATCH_RETRY_DELAY`, `BATCH_BACKOFF_CAP`, `BATCH_MAX_CHECK_FAILURES`.
    pub policy: Policy,
    /// How the app's queue messages are encoded (host.json `messageEncoding`), so that its triggers read them.
    pub message_encoding: MessageEncoding,
    /// `BATCH_COMPLETED_QUEUE` (`None`: events are off).
    pub completed_queue: Option<String>,
    /// `BATCH_PARTS_CONTAINER`: where a split file's parts are written.
    pub parts_container: String,
}

impl Jobs {
    /// The context for `storage`'s account, with job records in `records_container`.
    pub fn new(batch: BatchClient, storage: StorageClient, records_container: String, settings: JobSettings) -> Self {
        let records = RecordStore::new(storage.clone(), records_container);
        Jobs { batch, storage, records, settings: Arc::new(settings) }
    }

    /// Puts `text` on one of the app's queues, invisible for `delay`: the one way follow-up checks, deferred
    /// submissions, dead letters and completion events are written.
    pub async fn enqueue(&self, queue: &str, text: &[u8], delay: Duration) -> Result<(), StorageError> {
        self.storage.put_message(queue, text, self.settings.message_encoding, delay).await
    }
}
