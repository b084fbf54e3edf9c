//! Where job records live: one small JSON blob per input blob version (name + ETag), in the input's storage account
//! ([`super::record`] is what it holds).
//!
//! A record makes submission exactly-once (it is created with `If-None-Match: *`, so one invocation wins, and the
//! winner holds a lease on it while it creates the job) and doubles as the job's status: QueueMonitor writes the
//! status, request counts and result locations after every check. `GET <container>?restype=container&comp=list`
//! on the records container (prefix `batch-input/`) lists every job's jobs.
//!
//! The record's `checks` counter also de-duplicates monitoring: a monitor message whose `attempt` is behind the
//! record was superseded by another delivery of the same check and is dropped.

use std::sync::Mutex;
use std::time::Instant;

use crate::storage::blob::Condition;
use crate::storage::{StorageClient, StorageError};
use bytes::Bytes;
use http::StatusCode;

use super::record::{self, JobRecord, Summary, SUMMARY_METADATA};

/// The submitter's lease on a record while it creates the job: longer than a create call may take
/// ([`crate::batch_api::CREATE_TIMEOUT`]), short enough that a crashed submitter's blob is recovered within a minute.
pub const SUBMIT_LEASE_SECS: u32 = 30;

/// Records in one container of one account.
#[derive(Clone, Debug)]
pub struct RecordStore {
    storage: StorageClient,
    container: String,
}

/// A record as read, with the ETag to update it under.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub record: JobRecord,
    pub etag: String,
}

/// A record as read, and whether a submitter holds its lease (only the submitter may write it then).
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedRecord {
    pub versioned: Versioned,
    pub leased: bool,
}

impl RecordStore {
    pub fn new(storage: StorageClient, container: String) -> Self {
        RecordStore { storage, container }
    }

    /// The record name of a blob version: `<container>/<name>/<etag>.json`.
    pub fn key(blob: &str, etag: &str) -> String {
        record::key(blob, etag)
    }

    /// Creates the record unless it exists. `Ok(None)`: another invocation created it first.
    pub async fn create(&self, key: &str, record: &JobRecord) -> Result<Option<String>, StorageError> {
        match self.put(key, record, Condition::IfNotExists).await {
            Ok(etag) => Ok(Some(etag)),
            Err(StorageError::Status { status: StatusCode::CONFLICT, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a record; `None` if there is none (or it is unreadable, which is logged).
    pub async fn read(&self, key: &str) -> Result<Option<Versioned>, StorageError> {
        Ok(self.read_with_lease(key).await?.map(|r| r.versioned))
    }

    /// [`Self::read`], and whether a submitter holds the record's lease (only it may write the record then).
    pub async fn read_with_lease(&self, key: &str) -> Result<Option<LeasedRecord>, StorageError> {
        let Some(blob) = self.storage.get_blob(&self.container, key).await? else { return Ok(None) };
        match serde_json::from_slice::<JobRecord>(&blob.content) {
            Ok(record) => {
                Ok(Some(LeasedRecord { versioned: Versioned { record, etag: blob.etag }, leased: blob.leased }))
            }
            Err(e) => {
                tracing::warn!(record = key, error = %e, "unreadable job record; ignoring it");
                Ok(None)
            }
        }
    }

    /// Writes a record under `condition`, creating the container on first use; returns the new ETag.
    pub async fn put(&self, key: &str, record: &JobRecord, condition: Condition) -> Result<String, StorageError> {
        let mut record = record.clone();
        record.updated_at = crate::clock::unix_now();
        let body = Bytes::from(serde_json::to_vec_pretty(&record).map_err(|e| StorageError::Parse(e.to_string()))?);
        // What the operators' page shows of the record rides along as metadata, so one listing gives every row.
        let summary = Summary::of(&record).encode();
        let metadata = [(SUMMARY_METADATA, summary.as_str())];
        let put = || {
            self.storage.put_blob(&self.container, key, body.clone(), "application/json", condition.clone(), &metadata)
        };
        match put().await {
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, code }) if code == "ContainerNotFound" => {
                self.storage.create_container(&self.container).await?;
                put().await
            }
            other => other,
        }
    }

    /// Reads, changes and writes back a record under `If-Match`, re-reading after a lost race (up to 5 times). A
    /// record leased by a submitter is not a lost race: that 412 (`LeaseIdMissing`) is returned at once.
    /// `known` is a version the caller has just read: the first try starts from it instead of reading again.
    /// `change` returns `false` to leave the record as it is. `Ok(None)`: there is no record.
    pub async fn update(
        &self,
        key: &str,
        mut known: Option<Versioned>,
        mut change: impl FnMut(&mut JobRecord) -> bool,
    ) -> Result<Option<JobRecord>, StorageError> {
        for _ in 0..5 {
            let current = match known.take() {
                Some(v) => Some(v),
                None => self.read(key).await?,
            };
            let Some(Versioned { mut record, etag }) = current else { return Ok(None) };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            match self.put(key, &record, Condition::IfMatch(etag)).await {
                Ok(_) => return Ok(Some(record)),
                Err(StorageError::Status { status: StatusCode::PRECONDITION_FAILED, code })
                    if !code.starts_with("Lease") =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::Parse(format!("record {key} kept changing under us")))
    }

    /// Takes the submitter's lease. `Ok(None)`: someone else holds it.
    pub async fn lease<'a>(&'a self, key: &'a str) -> Result<Option<Lease<'a>>, StorageError> {
        match self.storage.acquire_lease(&self.container, key, SUBMIT_LEASE_SECS).await {
            Ok(id) => Ok(Some(Lease { store: self, key, id, renewed: Mutex::new(Instant::now()) })),
            Err(StorageError::Status { status: StatusCode::CONFLICT, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The records of every version of `blob` (`container/name`) but the one named `key`.
    pub async fn other_versions(&self, blob: &str, key: &str) -> Result<Vec<JobRecord>, StorageError> {
        let prefix = format!("{blob}/");
        let items = match self.storage.list_all_blobs(&self.container, Some(&prefix)).await {
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let mut records = Vec::new();
        // `a.jsonl/<etag>.json` only: `a.jsonl/b.jsonl/<etag>.json` is the record of another blob.
        for item in items.iter().filter(|i| i.name != key && !i.name[prefix.len()..].contains('/')) {
            if let Some(v) = self.read(&item.name).await? {
                records.push(v.record);
            }
        }
        Ok(records)
    }

    /// Every record's name and metadata, following the listing's pages (5,000 records a page).
    pub async fn list(&self) -> Result<Vec<crate::storage::blob::BlobItem>, StorageError> {
        match self.storage.list_all_blobs(&self.container, None).await {
            Err(StorageError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Releases a lease (best effort: it expires by itself).
    pub async fn release(&self, key: &str, lease_id: &str) {
        if let Err(e) = self.storage.release_lease(&self.container, key, lease_id).await {
            tracing::warn!(record = key, error = %e, "releasing the record lease failed; it will expire");
        }
    }
}

/// The submitter's lease on one record: only its holder may write the record while it lasts.
#[derive(Debug)]
pub struct Lease<'a> {
    store: &'a RecordStore,
    key: &'a str,
    id: String,
    /// When the lease was last taken or renewed.
    renewed: Mutex<Instant>,
}

impl Lease<'_> {
    /// The record's key.
    pub fn key(&self) -> &str {
        self.key
    }

    /// Writes the record under the lease; returns the new ETag.
    pub async fn write(&self, record: &JobRecord) -> Result<String, StorageError> {
        self.store.put(self.key, record, Condition::Lease(self.id.clone())).await
    }

    /// Renews the lease once half of it has passed, so that a step longer than one lease (a recovery paging
    /// through a long list) still holds it. Fails if it lapsed and another submitter took it.
    pub async fn keep(&self) -> Result<(), StorageError> {
        let half = std::time::Duration::from_secs(u64::from(SUBMIT_LEASE_SECS) / 2);
        if self.renewed.lock().unwrap_or_else(|e| e.into_inner()).elapsed() < half {
            return Ok(());
        }
        self.store.storage.renew_lease(&self.store.container, self.key, &self.id).await?;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// Releases the lease (best effort: it expires by itself).
    pub async fn release(self) {
        self.store.release(self.key, &self.id).await;
    }
}
