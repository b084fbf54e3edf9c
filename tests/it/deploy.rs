//! scripts/deploy-azure.sh: its `--dry-run` plan (every command it would run, in order) for Flex Consumption and for
//! Premium, compared with the plans in tests/fixtures. A change to the script shows here as a change to a plan, to
//! be read in review. `UPDATE_PLANS=1` rewrites the fixtures.

use std::path::Path;
use std::process::Command;

fn plan(extra: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join("scripts/deploy-azure.sh"))
        .args(["--app", "bbm-demo", "--openai", "aoai-demo", "--openai-group", "rg-ai", "--dry-run"])
        .args(extra)
        // Nothing may be needed from the machine: no az, func or cargo on the path.
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "the dry run failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty(), "a dry run prints its plan on stderr only");
    String::from_utf8(output.stderr).expect("utf-8")
}

fn compare(actual: &str, fixture: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    if std::env::var_os("UPDATE_PLANS").is_some() {
        std::fs::write(&path, actual).expect("write the plan");
    }
    let expected = std::fs::read_to_string(&path).expect("the plan fixture");
    for (i, (a, e)) in actual.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, e, "{fixture}, line {}", i + 1);
    }
    assert_eq!(actual.lines().count(), expected.lines().count(), "{fixture}: the plans differ in length:\n{actual}");
}

#[test]
fn the_flex_plan_is_identity_based_and_subscribes_the_blobs_webhook() {
    let plan = plan(&[]);
    compare(&plan, "deploy-plan-flex.txt");
    assert!(plan.contains("--allow-shared-key-access false"));
    assert!(plan.contains("--flexconsumption-location"));
    assert!(plan.contains("scripts/build-azure.sh --event-grid"));
    assert!(plan.contains("functionName=Host.Functions.BlobMonitor"));
    assert!(!plan.contains("OPENAI_API_KEY") && !plan.contains("AccountKey"), "no keys in the settings");
}

#[test]
fn the_premium_plan_polls_and_makes_no_subscription() {
    let plan = plan(&["--plan", "premium"]);
    compare(&plan, "deploy-plan-premium.txt");
    assert!(plan.contains("--sku EP1"));
    assert!(!plan.contains("eventgrid"));
    assert!(!plan.contains("--event-grid"));
}

#[test]
fn bad_arguments_are_refused_with_a_usage_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [&["--app", "x"][..], &["--app", "x", "--openai", "y", "--openai-group", "z", "--plan", "consumption"]]
    {
        let output = Command::new("bash").arg(root.join("scripts/deploy-azure.sh")).args(args).output().expect("bash");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!output.stderr.is_empty());
    }
}
