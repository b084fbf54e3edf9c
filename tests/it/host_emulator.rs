//! The host emulator against a handler that answers 2xx with an empty body: as the real host does, it waits for
//! `functionTimeout`, fails the invocation and restarts the worker (functions-protocol.md §3).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use devstack::host_emulator::worker::{Worker, WorkerSpec};

#[tokio::test]
async fn a_2xx_without_a_result_waits_for_the_function_timeout_then_restarts_the_worker() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/no_result_handler.py");
    let spec = WorkerSpec {
        executable: PathBuf::from("python3"),
        arguments: vec![script.display().to_string()],
        app_root: std::env::temp_dir(),
        settings: Vec::new(),
        function_timeout: Some(Duration::from_secs(1)),
    };
    let worker = Worker::start(spec).await.expect("the fake handler starts");
    let starts = worker.starts.load(Ordering::SeqCst);
    let started = Instant::now();
    let outcome = worker.invoke("QueueMonitor", false, br#"{"Data":{},"Metadata":{}}"#.to_vec()).await;
    assert!(started.elapsed() >= Duration::from_millis(900), "answered after {:?}", started.elapsed());
    assert!(outcome.error.as_deref().is_some_and(|e| e.contains("function timeout")), "{outcome:?}");
    assert!(!outcome.succeeded());
    tokio::time::timeout(Duration::from_secs(20), async {
        while worker.starts.load(Ordering::SeqCst) <= starts {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker was restarted");
    worker.stop();
}
