//! The content check of BlobMonitor: the blob's raw (JSON-escaped base64) content is decoded ([`ContentDecoder`])
//! and validated line by line ([`Validator`]) on one checking thread per process, fed through a bounded channel, so
//! that checking overlaps reading the request (the large-file time target, docs/performance.md). One long-lived
//! thread with one reused decoder and validator rather than one per request: the allocator keeps a thread's freed
//! memory for that thread, and a new thread, table and buffers per file added that memory up.

use crate::jobs::plan::Limits;
use crate::jobs::validate::{Checked, Validator};
use crate::protocol::blob_content::{ContentDecoder, ContentError};

/// Content handed to the checking thread at a time, and how many such pieces may wait for it. Each hand-over may
/// wake a thread, so pieces are large enough to make those few, and small enough that two in flight stay a small part
/// of the memory target (the trade is measured in docs/performance.md).
pub(super) const CHECK_PIECE: usize = 256 << 10;
const CHECK_QUEUE: usize = 2;
/// The request body is read in parts of at most this much, so that a piece never outgrows its buffer of
/// `CHECK_PIECE + READ_PART` (a frame may be as large as hyper's read buffer, hundreds of KiB with a Content-Length).
pub(super) const READ_PART: usize = 64 << 10;

/// One file's check on the checking thread: raw content in, problems out. The pieces' buffers go back to the
/// reading task to be filled again, so a file holds a few pieces at most.
pub(super) struct Check {
    pieces: tokio::sync::mpsc::Sender<Vec<u8>>,
    spares: std::sync::mpsc::Receiver<Vec<u8>>,
    done: tokio::sync::oneshot::Receiver<Result<Checked, ContentError>>,
}

/// What the checking thread is handed for one file.
struct CheckJob {
    /// How the file is cut into parts.
    limits: Limits,
    pieces: tokio::sync::mpsc::Receiver<Vec<u8>>,
    give_back: std::sync::mpsc::SyncSender<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<Checked, ContentError>>,
}

/// The checking thread's queue of files, started on first use.
fn checker() -> &'static std::sync::mpsc::Sender<CheckJob> {
    static CHECKER: std::sync::OnceLock<std::sync::mpsc::Sender<CheckJob>> = std::sync::OnceLock::new();
    CHECKER.get_or_init(|| {
        let (jobs, incoming) = std::sync::mpsc::channel::<CheckJob>();
        let spawned =
            std::thread::Builder::new().name("content-check".into()).spawn(move || serve(incoming, check_file));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the content-check thread could not start");
        }
        jobs
    })
}

/// The checking thread: each file in turn, with one decoder and one validator for every file (their buffers and id
/// table are reused, not reallocated). A panic while checking a file, a bug rather than bad input, ends that file's
/// check only: its invocation reports that the check stopped, and later files are checked with a fresh decoder and
/// validator, where a dead thread would have failed every BlobMonitor invocation until the process restarted.
fn serve(incoming: std::sync::mpsc::Receiver<CheckJob>, check: fn(&mut ContentDecoder, &mut Validator, CheckJob)) {
    let (mut decoder, mut validator) = (ContentDecoder::new(), Validator::default());
    for job in incoming {
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut decoder, &mut validator, job)));
        if checked.is_err() {
            tracing::error!(
                "checking a blob's content panicked; that invocation fails, the next blob is checked afresh"
            );
            (decoder, validator) = (ContentDecoder::new(), Validator::default());
        }
    }
}

/// One file: its pieces decoded and validated as they come, the problems (or why the content is not base64) sent back.
fn check_file(decoder: &mut ContentDecoder, validator: &mut Validator, mut job: CheckJob) {
    decoder.reset();
    validator.reset(std::mem::take(&mut job.limits));
    while let Some(mut raw) = job.pieces.blocking_recv() {
        // Once enough problems are found, the rest is only drained.
        if !validator.is_done() {
            decoder.feed(&raw, &mut |bytes| validator.feed(bytes));
        }
        raw.clear();
        let _ = job.give_back.try_send(raw);
    }
    let finished = if validator.is_done() { Ok(()) } else { decoder.finish_blob(&mut |b| validator.feed(b)) };
    let _ = job.done.send(finished.map(|()| validator.finish_file()));
}

/// A buffer for one piece.
pub(super) fn new_piece() -> Vec<u8> {
    Vec::with_capacity(CHECK_PIECE + READ_PART)
}

impl Check {
    pub(super) fn start(limits: Limits) -> Self {
        let (check, job) = Check::new(limits);
        // A failed hand-over drops the job, and `finish` reports that the check stopped.
        let _ = checker().send(job);
        check
    }

    /// One file's two ends: this one for the reading task, the job for the checking thread.
    fn new(limits: Limits) -> (Self, CheckJob) {
        let (pieces, incoming) = tokio::sync::mpsc::channel::<Vec<u8>>(CHECK_QUEUE);
        let (give_back, spares) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHECK_QUEUE + 2);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        (Check { pieces, spares, done }, CheckJob { limits, pieces: incoming, give_back, done: done_tx })
    }

    /// An empty buffer for the next piece: one the thread gave back, or a new one.
    pub(super) fn spare(&self) -> Vec<u8> {
        self.spares.try_recv().unwrap_or_else(|_| new_piece())
    }

    pub(super) async fn send(&mut self, piece: Vec<u8>) {
        if !piece.is_empty() {
            // The receiver lives until all pieces are in; a send can only fail if the thread died, which `finish` reports.
            let _ = self.pieces.send(piece).await;
        }
    }

    pub(super) async fn finish(self) -> anyhow::Result<Checked> {
        drop(self.pieces);
        Ok(self.done.await.map_err(|_| anyhow::anyhow!("the content check stopped"))??)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine;

    use super::*;
    use crate::jobs::validate::Problem;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// The check with a bug that shows on its first file only.
    fn fragile(decoder: &mut ContentDecoder, validator: &mut Validator, job: CheckJob) {
        assert!(CALLS.fetch_add(1, Ordering::SeqCst) > 0, "a bug in the check");
        check_file(decoder, validator, job);
    }

    async fn check(jobs: &std::sync::mpsc::Sender<CheckJob>, content: &[u8]) -> anyhow::Result<Vec<Problem>> {
        let (mut check, job) = Check::new(Limits::default());
        jobs.send(job).expect("the thread takes files");
        check.send(base64::engine::general_purpose::STANDARD.encode(content).into_bytes()).await;
        check.finish().await.map(|c| c.problems)
    }

    #[tokio::test]
    async fn a_panic_while_checking_one_file_fails_that_file_only() {
        let (jobs, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || serve(incoming, fragile));
        let good = br#"{"custom_id":"a","method":"POST","url":"/chat/completions","body":{"model":"m"}}"#;
        let failed = check(&jobs, good).await.expect_err("the first file's check panicked");
        assert!(failed.to_string().contains("the content check stopped"), "{failed}");
        let problems = check(&jobs, b"not json\n").await.expect("the next file is checked");
        assert_eq!(problems.iter().map(|p| (p.line, p.code.as_str())).collect::<Vec<_>>(), [(1, "invalid_json_line")]);
        assert_eq!(check(&jobs, good).await.expect("and the next").len(), 0);
    }
}
