//! Progress of a long restore: a bar with the rate on a terminal (`indicatif`), plain lines
//! every few seconds otherwise (a CI log, a file), or nothing.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes. Cloning shares it (the log is read on another thread).
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

enum Inner {
    Bar(Mutex<Option<ProgressBar>>),
    Lines(Mutex<Lines>),
    Hidden,
}

struct Lines {
    out: Box<dyn Write + Send>,
    phase: String,
    total: u64,
    done: u64,
    started: Instant,
    printed: Instant,
}

/// How often plain lines are printed during a phase.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    /// A bar on standard error (for a terminal).
    pub fn terminal() -> Self {
        Self::of(Inner::Bar(Mutex::new(None)))
    }

    /// Plain lines to `out`.
    pub fn lines(out: Box<dyn Write + Send>) -> Self {
        let now = Instant::now();
        Self::of(Inner::Lines(Mutex::new(Lines {
            out,
            phase: String::new(),
            total: 0,
            done: 0,
            started: now,
            printed: now,
        })))
    }

    /// On a terminal a bar, otherwise lines, on standard error.
    pub fn stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Self::terminal()
        } else {
            Self::lines(Box::new(std::io::stderr()))
        }
    }

    pub fn hidden() -> Self {
        Self::of(Inner::Hidden)
    }

    fn of(inner: Inner) -> Self {
        Progress {
            inner: Arc::new(inner),
        }
    }

    /// Start a phase of `total` steps (events, statements).
    pub fn phase(&self, name: &str, total: u64) {
        match &*self.inner {
            Inner::Bar(bar) => {
                let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:32} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                );
                b.set_message(name.to_string());
                if let Some(old) = lock(bar).replace(b) {
                    old.finish();
                }
            }
            Inner::Lines(l) => {
                let mut l = lock(l);
                let now = Instant::now();
                (l.phase, l.total, l.done, l.started, l.printed) =
                    (name.to_string(), total, 0, now, now);
                let _ = writeln!(l.out, "{name}: {total}");
            }
            Inner::Hidden => {}
        }
    }

    /// `n` more steps of the current phase done.
    pub fn advance(&self, n: u64) {
        match &*self.inner {
            Inner::Bar(bar) => {
                if let Some(b) = &*lock(bar) {
                    b.inc(n);
                }
            }
            Inner::Lines(l) => {
                let mut l = lock(l);
                l.done += n;
                if l.printed.elapsed() >= LINE_EVERY {
                    l.printed = Instant::now();
                    l.line();
                }
            }
            Inner::Hidden => {}
        }
    }

    /// The current phase is done.
    pub fn finish(&self) {
        match &*self.inner {
            Inner::Bar(bar) => {
                if let Some(b) = lock(bar).take() {
                    b.finish();
                }
            }
            Inner::Lines(l) => lock(l).line(),
            Inner::Hidden => {}
        }
    }

    /// A message of its own (between phases).
    pub fn note(&self, text: &str) {
        match &*self.inner {
            Inner::Bar(bar) => match &*lock(bar) {
                Some(b) => b.println(text),
                None => eprintln!("{text}"),
            },
            Inner::Lines(l) => {
                let _ = writeln!(lock(l).out, "{text}");
            }
            Inner::Hidden => {}
        }
    }
}

impl Lines {
    fn line(&mut self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let _ = writeln!(
            self.out,
            "{}: {}/{} ({:.0}/s)",
            self.phase,
            self.done,
            self.total,
            self.done as f64 / secs
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn without_a_terminal_each_phase_is_plain_lines_with_counts_and_rate() {
        let out = Shared::default();
        let p = Progress::lines(Box::new(out.clone()));
        p.phase("reading changes", 1500);
        for _ in 0..1500 {
            p.advance(1);
        }
        p.finish();
        p.note("planning");
        let text = String::from_utf8(lock(&out.0).clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "reading changes: 1500");
        assert!(
            lines[1].starts_with("reading changes: 1500/1500 ("),
            "{text}"
        );
        assert!(lines[1].ends_with("/s)"), "{text}");
        assert_eq!(lines[2], "planning");
        // Hidden progress writes nothing and costs nothing.
        let h = Progress::hidden();
        h.phase("x", 1);
        h.advance(1);
        h.finish();
    }
}
