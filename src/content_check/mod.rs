//! BlobMonitor's body, read as it streams: the envelope is kept without the blob content ([`ElidingReader`]), and the
//! content is decoded and validated line by line on one checking thread (`thread.rs`) while the reading goes on. The
//! adapter only turns the result into a job; this module owns the hardest concurrency in the crate.

mod thread;

use axum::body::Body;
use http_body_util::BodyExt;

use crate::jobs::plan::Limits;
use crate::jobs::validate::Checked;
use crate::protocol::blob_envelope::{ElidedValue, ElidingReader};
use crate::protocol::InvokeRequest;

use thread::{new_piece, Check, CHECK_PIECE, READ_PART};

/// Largest envelope accepted. The host cannot build more than ~768 MiB of base64 (a .NET string limit).
pub const MAX_BLOB_ENVELOPE: u64 = 1 << 30;
/// Largest part of the envelope kept in memory: everything except the blob content.
const MAX_KEPT: usize = 4 << 20;

/// The envelope and, when validating, what the check found in the blob content and how it cuts it into jobs (`None`
/// when it was off or the envelope carries no content).
pub type Envelope = (InvokeRequest, Vec<ElidedValue>, Option<Checked>);

/// Streams the body through the eliding reader, bounded by [`MAX_BLOB_ENVELOPE`], validating the content on the way.
/// `limits` is `None` when validation is off.
pub async fn read_envelope(mut body: Body, limits: Option<Limits>) -> anyhow::Result<Envelope> {
    let mut reader = ElidingReader::new(MAX_KEPT);
    let mut check = limits.map(Check::start);
    let mut piece = new_piece();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the request body failed: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        // In parts, so that a piece never outgrows its buffer ([`READ_PART`]).
        for part in data.chunks(READ_PART) {
            reader.feed_with(part, &mut |raw| {
                if check.is_some() {
                    piece.extend_from_slice(raw);
                }
            })?;
            if reader.total() > MAX_BLOB_ENVELOPE {
                anyhow::bail!("the envelope is larger than {MAX_BLOB_ENVELOPE} bytes");
            }
            if let Some(check) = check.as_mut().filter(|_| piece.len() >= CHECK_PIECE) {
                let next = check.spare();
                check.send(std::mem::replace(&mut piece, next)).await;
            }
        }
    }
    let (request, elided) = reader.finish()?;
    let checked = match check {
        Some(mut check) => {
            check.send(piece).await;
            let checked = check.finish().await?;
            // Without a content string there was nothing to check.
            (!elided.is_empty()).then_some(checked)
        }
        None => None,
    };
    Ok((request, elided, checked))
}
