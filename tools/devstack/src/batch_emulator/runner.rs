//! Drives one job through its lifecycle on the configured clock: validate the input blob, run, finalize, write
//! results; or fail, or honour a cancellation. A status forced from outside (e.g. `expired`) ends the run.

use std::sync::Arc;
use std::time::Duration;

use blob_batch_monitor::storage::blob::Condition;
use bytes::Bytes;
use serde_json::json;

use super::validate::{respond, validate, Invalid};
use super::World;

/// How often a sleeping phase checks for a cancellation or a forced status.
const TICK: Duration = Duration::from_millis(20);

/// Why a phase ended early.
enum Interrupted {
    Cancel,
    Ended,
}

/// Sleeps `d` unless the job is cancelled or reaches a terminal status meanwhile.
async fn phase(world: &World, id: &str, d: Duration) -> Result<(), Interrupted> {
    wait(world, id, d, true).await
}

/// Sleeps `d` unless the job reaches a terminal status (or, with `stop_on_cancel`, is cancelled) meanwhile.
async fn wait(world: &World, id: &str, d: Duration, stop_on_cancel: bool) -> Result<(), Interrupted> {
    let until = tokio::time::Instant::now() + d;
    loop {
        match world.job(id) {
            None => return Err(Interrupted::Ended),
            Some(j) if j.is_terminal() => return Err(Interrupted::Ended),
            Some(j) if stop_on_cancel && j.cancel_requested => return Err(Interrupted::Cancel),
            Some(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        tokio::time::sleep(TICK.min(until - now)).await;
    }
}

pub(super) async fn run(world: Arc<World>, id: String, bad_window: bool, token_limit: bool) {
    let timings = world.config.lock().unwrap_or_else(|e| e.into_inner()).timings;
    match lifecycle(&world, &id, bad_window, token_limit, timings).await {
        Ok(()) | Err(Interrupted::Ended) => {}
        Err(Interrupted::Cancel) => {
            if wait(&world, &id, timings.cancelling, false).await.is_ok() {
                world.update(&id, |j| {
                    if !j.is_terminal() {
                        j.set_status("cancelled")
                    }
                });
            }
        }
    }
}

async fn lifecycle(
    world: &World,
    id: &str,
    bad_window: bool,
    token_limit: bool,
    t: super::Timings,
) -> Result<(), Interrupted> {
    phase(world, id, t.validating).await?;
    let Some(job) = world.job(id) else {
        return Err(Interrupted::Ended);
    };
    let checked = if token_limit {
        Err(Invalid {
            code: "token_limit_exceeded",
            message: "The enqueued token limit for this deployment was exceeded.".into(),
            line: None,
        })
    } else if bad_window {
        Err(Invalid { code: "invalid_request", message: "completion_window must be 24h".into(), line: None })
    } else {
        read_and_validate(world, &job.input_blob).await
    };
    let lines = match checked {
        Ok(lines) => lines,
        Err(e) => {
            world.update(id, |j| {
                if !j.is_terminal() {
                    j.errors = vec![json!({"code": e.code, "message": e.message, "param": null, "line": e.line.map(|l| l.to_string())})];
                    j.set_status("failed");
                }
            });
            return Ok(());
        }
    };
    world.update(id, |j| {
        j.total = lines.len() as u64;
        if !j.is_terminal() && !j.cancel_requested {
            j.set_status("in_progress");
        }
    });
    phase(world, id, t.in_progress).await?;
    world.update(id, |j| {
        if !j.is_terminal() && !j.cancel_requested {
            j.set_status("finalizing")
        }
    });
    phase(world, id, t.finalizing).await?;

    let created = job.created_at;
    let (mut results, mut errors) = (String::new(), String::new());
    let (mut ok, mut failed) = (0u64, 0u64);
    for (i, line) in lines.iter().enumerate() {
        match respond(line, i, created) {
            Ok(v) => {
                results.push_str(&v.to_string());
                results.push('\n');
                ok += 1;
            }
            Err(v) => {
                errors.push_str(&v.to_string());
                errors.push('\n');
                failed += 1;
            }
        }
    }
    let folder = format!("{}/{}", job.output_folder.trim_end_matches('/'), id.trim_start_matches("batch_"));
    let output_blob = format!("{folder}/results.jsonl");
    let error_blob = format!("{folder}/errors.jsonl");
    let written = async {
        write(world, &output_blob, results).await?;
        // As on Azure, error_blob is always reported but only written when there are errors.
        if failed > 0 {
            write(world, &error_blob, errors).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    world.update(id, |j| {
        if j.is_terminal() {
            return;
        }
        match &written {
            Ok(()) => {
                j.completed = ok;
                j.failed = failed;
                j.output_blob = output_blob.clone();
                j.error_blob = error_blob.clone();
                j.set_status("completed");
            }
            Err(e) => {
                j.errors = vec![json!({"code": "input_no_permissions", "message": e, "param": null, "line": null})];
                j.set_status("failed");
            }
        }
    });
    Ok(())
}

async fn read_and_validate(world: &World, url: &str) -> Result<Vec<super::validate::RequestLine>, Invalid> {
    let no_access = |m: String| Invalid { code: "input_no_permissions", message: m, line: None };
    let (storage, container, name) = world
        .storage_for(url)
        .ok_or_else(|| no_access(format!("the service cannot reach {url}: no storage account configured for it")))?;
    let blob = retrying(|| storage.get_blob(&container, &name))
        .await
        .map_err(|e| no_access(format!("reading {url} failed: {e}")))?
        .ok_or_else(|| no_access(format!("the input blob {url} does not exist")))?;
    let (max_tasks, max_bytes) = {
        let c = world.config.lock().unwrap_or_else(|e| e.into_inner());
        (c.max_tasks, c.max_bytes)
    };
    if blob.content.len() as u64 > max_bytes {
        let message =
            format!("the input file is {} bytes, more than the {max_bytes} a job may read", blob.content.len());
        return Err(Invalid { code: "invalid_request", message, line: None });
    }
    validate(&blob.content, max_tasks)
}

async fn write(world: &World, url: &str, content: String) -> Result<(), String> {
    let (storage, container, name) = world
        .storage_for(url)
        .ok_or_else(|| format!("the service cannot write to {url}: no storage account configured for it"))?;
    retrying(|| storage.create_container(&container))
        .await
        .map_err(|e| format!("creating container {container}: {e}"))?;
    let content = Bytes::from(content);
    retrying(|| storage.put_blob(&container, &name, content.clone(), "application/jsonl", Condition::None, &[]))
        .await
        .map(|_| ())
        .map_err(|e| format!("writing {url}: {e}"))
}

/// Like the real service, rides out a storage hiccup (connection failures and 5xx, for up to a minute) before
/// failing the job.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, blob_batch_monitor::storage::StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, blob_batch_monitor::storage::StorageError>>,
{
    use blob_batch_monitor::storage::StorageError;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match op().await {
            Err(StorageError::Transport(_)) if tokio::time::Instant::now() < deadline => {}
            Err(StorageError::Status { status, .. })
                if status.is_server_error() && tokio::time::Instant::now() < deadline => {}
            other => return other,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
