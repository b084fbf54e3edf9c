//! Log lines reach stdout once per runtime turn, not once per line. Each line used to be its own `write(2)`; under
//! the host, stdout is a pipe that the host's reader thread drains, so every line also woke another process. Lines are
//! collected in one process-wide buffer, in order, and written out in one piece when a runtime worker is about to
//! sleep ([`flush`], installed as the runtime's `on_thread_park` hook), when the buffer passes [`FLUSH_AT`] bytes,
//! and at exit. A SIGKILL can lose at most the lines of the turn in progress.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// A buffer this large is written out at once, whether or not the runtime sleeps.
pub const FLUSH_AT: usize = 16 << 10;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn buffer() -> MutexGuard<'static, Vec<u8>> {
    BUFFER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes what is buffered to stdout. Cheap when nothing is.
pub fn flush() {
    let mut lines = buffer();
    drain_into(&mut lines, &mut io::stdout().lock());
}

/// Writes and clears `lines` (under the buffer's lock, so chunks from different threads cannot swap places).
fn drain_into(lines: &mut Vec<u8>, out: &mut impl Write) {
    if lines.is_empty() {
        return;
    }
    // A log line that cannot be written has nowhere else to go.
    let _ = out.write_all(lines).and_then(|()| out.flush());
    lines.clear();
}

/// The subscriber's writer: appends each formatted line to the shared buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurnBuffered;

impl<'a> MakeWriter<'a> for TurnBuffered {
    type Writer = LineSink;
    fn make_writer(&'a self) -> LineSink {
        LineSink
    }
}

/// One event's writer.
#[derive(Debug)]
pub struct LineSink;

impl Write for LineSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut lines = buffer();
        append(&mut lines, data, || io::stdout().lock());
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Adds a line; `out` is opened (stdout locked) only when the buffer is full.
fn append<W: Write>(lines: &mut Vec<u8>, data: &[u8], out: impl FnOnce() -> W) {
    lines.extend_from_slice(data);
    if lines.len() >= FLUSH_AT {
        drain_into(lines, &mut out());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writes it receives.
    #[derive(Default)]
    struct Sink {
        writes: usize,
        bytes: Vec<u8>,
    }

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_wait_for_the_turn_to_end_unless_the_buffer_fills() {
        let (mut lines, mut out) = (Vec::new(), Sink::default());
        append(&mut lines, b"one\n", || &mut out);
        append(&mut lines, b"two\n", || &mut out);
        assert_eq!(out.writes, 0, "nothing is written while the turn goes on");
        drain_into(&mut lines, &mut out);
        assert_eq!((out.writes, &out.bytes[..]), (1, &b"one\ntwo\n"[..]), "both lines in one write");
        drain_into(&mut lines, &mut out);
        assert_eq!(out.writes, 1, "an empty buffer writes nothing");

        let line = [b'x'; 1000];
        for _ in 0..FLUSH_AT / line.len() + 1 {
            append(&mut lines, &line, || &mut out);
        }
        assert_eq!(out.writes, 2, "a full buffer is written without waiting");
        assert!(lines.is_empty() && out.bytes.len() == 8 + (FLUSH_AT / line.len() + 1) * line.len());
    }
}
