//! The page's HTML, rendered on the server with maud, which escapes every interpolated value (blob names, reasons
//! and error messages come from users). One stylesheet and one small script, both inline and allowed by their hashes
//! in the Content-Security-Policy; nothing is loaded from anywhere else, so the page works on a locked-down network.

use std::sync::LazyLock;

use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sha2::{Digest, Sha256};

use crate::clock::{rfc3339, unix_now};
use crate::escape::escaped;
use crate::jobs::overview::{Detail, Overview, Row, SHOWN_STATES as STATES, UNKNOWN_STATE};

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1f2328}\
h1{font-size:1.3rem}a{color:#0969da}table{border-collapse:collapse;width:100%}\
th,td{padding:.3rem .5rem;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}\
th{background:#f6f8fa}.counters{display:flex;flex-wrap:wrap;gap:.5rem;margin:1rem 0}\
.counter{border:1px solid #d0d7de;border-radius:6px;padding:.4rem .7rem;text-decoration:none;color:inherit}\
.counter b{display:block;font-size:1.2rem}.badge{border-radius:1rem;padding:.1rem .55rem;font-size:.8rem;color:#fff;white-space:nowrap}\
.completed{background:#1a7f37}.failed,.dead-lettered,.rejected{background:#cf222e}.expired,.cancelled{background:#6e7781}\
.running{background:#0969da}.deferred,.submitting{background:#9a6700}.unknown{background:#57606a}\
meter{width:90px;vertical-align:middle}\
.reason{color:#57606a;max-width:28rem}.mono{font-family:ui-monospace,monospace;font-size:.85rem}\
pre{background:#f6f8fa;padding:.7rem;overflow:auto;max-height:30rem}form.inline{display:inline}\
nav a{margin-right:.6rem}";

/// Asks before an action is posted: every form that carries `data-confirm`.
const SCRIPT: &str = "document.querySelectorAll('form[data-confirm]').forEach(function(f){\
f.addEventListener('submit',function(e){if(!confirm(f.dataset.confirm)){e.preventDefault();}});});";

/// The Content-Security-Policy of every answer: nothing but the inline stylesheet and script above, by hash.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    let hash = |text: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()));
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; img-src 'self'; form-action 'self'; \
         base-uri 'none'; frame-ancestors 'none'",
        hash(CSS),
        hash(SCRIPT)
    )
});

/// Everything but RFC 3986's unreserved characters is percent-encoded in a path segment.
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Builds `/api/jobs[/…]?…`, carrying the function key (`code`) so that navigation keeps working behind the host.
pub struct Links<'a> {
    pub code: Option<&'a str>,
}

impl Links<'_> {
    pub fn to(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("/api/jobs{path}");
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in query.iter().filter(|(_, v)| !v.is_empty()) {
            pairs.append_pair(k, v);
        }
        if let Some(code) = self.code {
            pairs.append_pair("code", code);
        }
        let pairs = pairs.finish();
        if !pairs.is_empty() {
            url.push('?');
            url.push_str(&pairs);
        }
        url
    }

    /// A job's page: its key, each segment percent-encoded.
    pub fn job(&self, key: &str, action: Option<&str>) -> String {
        let mut path: String =
            key.split('/').map(|s| format!("/{}", percent_encoding::utf8_percent_encode(s, PATH_SEGMENT))).collect();
        if let Some(action) = action {
            path.push('/');
            path.push_str(action);
        }
        self.to(&path, &[])
    }
}

fn layout(title: &str, refresh: bool, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh { meta http-equiv="refresh" content="15"; }
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (body)
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// The table page.
pub fn list_page(o: &Overview, state: &str, q: &str, links: &Links<'_>) -> String {
    let body = html! {
        h1 { "Batch jobs" }
        div.counters {
            a.counter href=(links.to("", &[("q", q)])) { b { (o.counters.total) } "all" }
            // `unknown` only when some record is.
            @for s in STATES.into_iter().chain(o.counters.by_state.contains_key(UNKNOWN_STATE).then_some(UNKNOWN_STATE)) {
                a.counter href=(links.to("", &[("state", s), ("q", q)])) {
                    b { (o.counters.by_state.get(s).copied().unwrap_or(0)) }
                    span class={"badge " (s)} { (s) }
                }
            }
            div.counter { b { (o.counters.tokens_used) } "tokens used by ended jobs" }
        }
        @if !o.counters.running_by_status.is_empty() {
            p { "Running: "
                @for (status, n) in &o.counters.running_by_status { (status) " " (n) "; " }
            }
        }
        form method="get" action="/api/jobs" {
            @if let Some(code) = links.code { input type="hidden" name="code" value=(code); }
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in STATES { option value=(s) selected[s == state] { (s) } }
            } }
            " "
            label { "Blob name contains " input type="search" name="q" value=(v(q)); }
            " " button { "Filter" }
        }
        p { (o.matching) " matching, page " (o.page) " of " (o.pages) }
        table {
            thead { tr {
                th { "Blob" } th { "State" } th { "Requests (completed / failed / total)" } th { "Batch" }
                th { "Started" } th { "Last update" } th { "Running for" } th { "Reason" }
            } }
            tbody { @for row in &o.rows { (table_row(row, links)) } }
        }
        nav {
            @if o.page > 1 {
                a href=(links.to("", &[("state", state), ("q", q), ("page", &(o.page - 1).to_string())])) { "← newer" }
            }
            @if o.page < o.pages {
                a href=(links.to("", &[("state", state), ("q", q), ("page", &(o.page + 1).to_string())])) { "older →" }
            }
        }
    };
    layout("Batch jobs", true, body).into_string()
}

fn table_row(row: &Row, links: &Links<'_>) -> Markup {
    let s = &row.summary;
    let counts = s.request_counts.clone().unwrap_or_default();
    let (total, completed, failed) =
        (counts.total.unwrap_or(0), counts.completed.unwrap_or(0), counts.failed.unwrap_or(0));
    let share = |n: u64| (n * 100).checked_div(total).unwrap_or(0).min(100);
    let ended = !matches!(row.shown.as_str(), "running" | "submitting" | "deferred");
    let until = if ended { s.updated_at } else { unix_now() };
    html! {
        tr {
            td { a href=(links.job(&row.key, None)) { (v(&s.blob)) } }
            td {
                span class={"badge " (row.shown)} { (row.shown) }
                @if row.shown == "running" { @if let Some(status) = &s.status { " " span.mono { (status) } } }
                @if let Some((ended, total)) = s.parts { br; (ended) " of " (total) " parts ended" }
            }
            td {
                (completed) " / " (failed) " / " (total) " "
                // A meter, not a styled bar: the CSP allows no inline style attribute.
                meter min="0" max=(total.max(1)) value=(completed)
                    title={(share(completed)) "% completed, " (share(failed)) "% failed"} {}
            }
            td.mono { (s.batch_id.as_deref().unwrap_or("—")) }
            td { (time(s.started_at)) }
            td { (time(s.updated_at)) }
            td { (duration(until.saturating_sub(s.started_at))) }
            td.reason {
                @if matches!(row.shown.as_str(), "deferred" | "rejected" | "dead-lettered" | UNKNOWN_STATE) { (v(s.reason.as_deref().unwrap_or(""))) }
                @if row.shown == "failed" { @if let Some(e) = &s.first_error { (v(e)) } }
                @if s.spares > 0 { " " (spares(s.spares)) }
            }
        }
    }
}

/// One job: the whole record, its errors and failed requests, the live batch object, and the actions it allows.
pub fn detail_page(d: &Detail, links: &Links<'_>, notice: Option<&str>) -> String {
    let r = &d.record;
    let record_json = serde_json::to_string_pretty(r).expect("a job record serializes");
    let body = html! {
        p { a href=(links.to("", &[])) { "← all jobs" } }
        h1 { (v(&r.blob)) }
        @if let Some(notice) = notice { p { strong { (v(notice)) } } }
        p { "ETag " span.mono { (v(&r.etag)) } ", state " (format!("{:?}", r.state)) }
        @if r.state == crate::jobs::record::RecordState::Submitted && (r.batch_id.is_some() || (!r.parts.is_empty() && !r.stopped)) {
            form.inline method="post" action=(links.job(&d.key, Some("cancel")))
                data-confirm="Cancel this batch job? Requests not yet run are lost." {
                button { "Cancel the job" }
            }
        }
        @if r.state == crate::jobs::record::RecordState::DeadLettered
            || r.parts.iter().any(|p| p.state == crate::jobs::record::PartState::DeadLettered) {
            form.inline method="post" action=(links.job(&d.key, Some("resubmit")))
                data-confirm="Submit this blob again?" {
                button { "Resubmit" }
            }
        }
        @if let Some(reason) = &r.reason { h2 { "Reason" } p { (v(reason)) } }
        @if !r.problems.is_empty() {
            h2 { "Problems in the file" }
            table { tr { th { "Line" } th { "Code" } th { "Message" } }
                @for p in &r.problems { tr { td { (p.line) } td.mono { (v(&p.code)) } td { (v(&p.message)) } } }
            }
        }
        @if !r.spare_batch_ids.is_empty() {
            h2 { "Spare jobs" }
            p { (spares(r.spare_batch_ids.len())) ": interrupted creates made more than one job for this blob version;                 this record follows the earliest." }
            ul { @for id in &r.spare_batch_ids { li.mono { (id) } } }
        }
        @if !r.parts.is_empty() {
            h2 { "Parts" }
            p { "The file was over one job's limits, so it runs as " (r.parts.len()) " jobs"
                @if let Some(budget) = r.token_budget { ", at most " (budget) " estimated tokens at once" }
                "; their results are joined into one file when every part has ended." }
            table {
                tr { th { "Part" } th { "Lines from" } th { "Requests" } th { "Estimated tokens" } th { "State" } th { "Batch" } th { "Ending" } }
                @for p in &r.parts {
                    tr {
                        td.mono { (v(&p.blob)) } td { (p.first_line) } td { (p.requests) } td { (p.tokens) }
                        td { (format!("{:?}", p.state)) } td.mono { (p.batch_id.as_deref().unwrap_or("—")) }
                        td { (v(p.status.as_deref().unwrap_or(""))) }
                    }
                }
            }
        }
        @if !r.errors.is_empty() { h2 { "Job errors" } ul { @for e in &r.errors { li { (v(e)) } } } }
        @if !r.failed_requests.is_empty() {
            h2 { "First failed requests" }
            ul { @for f in &r.failed_requests { li { (v(&f.to_string())) } } }
        }
        h2 { "Job record" }
        pre { (v(&record_json)) }
        @if let Some(batch) = &d.batch {
            h2 { "Batch, as the API reports it now" } pre { (v(&serde_json::to_string_pretty(batch).expect("a JSON value serializes"))) }
        }
        @if let Some(e) = &d.batch_error { h2 { "Batch" } p { "The batch API could not be asked: " (v(e)) } }
    };
    layout(&v(&r.blob), false, body).into_string()
}

/// A short page for an error or a missing job.
pub fn message_page(title: &str, text: &str, links: &Links<'_>) -> String {
    layout(title, false, html! { p { a href=(links.to("", &[])) { "← all jobs" } } h1 { (v(title)) } p { (v(text)) } })
        .into_string()
}

/// User text as the page shows it: maud escapes it for HTML, and [`escaped`] makes its control and bidirectional
/// characters visible (`\u{202e}`), so that no name can reverse or hide what follows it.
fn v(s: &str) -> String {
    escaped(s).into_owned()
}

fn spares(n: usize) -> String {
    if n == 1 {
        "1 spare job cancelled".into()
    } else {
        format!("{n} spare jobs cancelled")
    }
}

fn time(unix: u64) -> String {
    if unix == 0 {
        return "—".into();
    }
    rfc3339(unix).replace('T', " ")
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}
