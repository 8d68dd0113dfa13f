//! Progress display: an indicatif bar on a TTY, plain lines otherwise.
//!
//! Library functions take `Option<&ProgressBar>` and only `set_length`/`inc` it.
//! [`Progress::new`] picks the display: a drawn bar when stderr is a terminal,
//! else a hidden bar plus a thread that logs one plain line every few seconds
//! (readable in CI logs and journald).

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display for one operation. Dropping it stops the line printer.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    printer: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// `label` prefixes the plain lines ("publish", "pull").
    pub fn new(label: &str) -> Self {
        Self::with_tty(label, std::io::stderr().is_terminal())
    }

    /// Same, with the TTY decision made by the caller.
    pub fn with_tty(label: &str, tty: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if tty {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            return Self {
                bar,
                stop,
                printer: None,
            };
        }
        let bar = ProgressBar::hidden();
        let (b, s, label) = (bar.clone(), stop.clone(), label.to_string());
        let printer = std::thread::spawn(move || {
            let start = Instant::now();
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(3) {
                    last = Instant::now();
                    eprintln!("{}", plain_line(&label, &b, start.elapsed()));
                }
            }
        });
        Self {
            bar,
            stop,
            printer: Some(printer),
        }
    }

    /// The bar to hand to library functions.
    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// Stop displaying (clears a drawn bar).
    pub fn finish(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.printer.take() {
            let _ = p.join();
        }
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `label: 12.0/256.0 MiB (4%), 80.1 MiB/s`.
pub fn plain_line(label: &str, bar: &ProgressBar, elapsed: Duration) -> String {
    let pos = bar.position();
    let len = bar.length().unwrap_or(0);
    let pct = (pos * 100).checked_div(len).unwrap_or(0);
    let rate = pos as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "{label}: {:.1}/{:.1} MiB ({pct}%), {:.1} MiB/s",
        mib(pos),
        mib(len),
        mib(rate as u64)
    )
}

/// Bytes to MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
