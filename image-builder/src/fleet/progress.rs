//! What `fleet up` shows while workers come up: on a terminal, one live line per worker
//! (stage and time since it was asked for), redrawn in place; otherwise a plain line each
//! time a worker's stage changes, so logs of CI jobs stay readable.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

/// Per-worker progress lines on a writer (stderr in the tool).
pub struct Progress<W: Write> {
    out: W,
    live: bool,
    started: Instant,
    /// Worker → (stage, since when it is in that stage).
    rows: BTreeMap<String, (String, Instant)>,
    /// Lines drawn by the last redraw (live mode).
    drawn: usize,
}

impl Progress<std::io::Stderr> {
    /// On stderr: live when stderr is a terminal.
    pub fn stderr() -> Self {
        let err = std::io::stderr();
        let live = err.is_terminal();
        Progress::new(err, live)
    }
}

impl<W: Write> Progress<W> {
    /// `live`: redraw one line per worker in place (a terminal); else print changes.
    pub fn new(out: W, live: bool) -> Self {
        Progress {
            out,
            live,
            started: Instant::now(),
            rows: BTreeMap::new(),
            drawn: 0,
        }
    }

    /// `worker` is now in `stage` (e.g. `creating`, `booting`, `waiting-cloud-init`,
    /// `ready`, `failed: …`).
    pub fn set(&mut self, worker: &str, stage: &str) {
        let now = Instant::now();
        let changed = match self.rows.get(worker) {
            Some((s, _)) => s != stage,
            None => true,
        };
        if changed {
            self.rows.insert(worker.to_owned(), (stage.to_owned(), now));
            if !self.live {
                let line = format!("{worker}: {stage} ({})", secs(now - self.started));
                // Progress is best effort: a closed stderr must not fail the command.
                writeln!(self.out, "{line}").ok();
            }
        }
        if self.live {
            self.redraw(now);
        }
    }

    /// A worker that is no longer followed (deleted).
    pub fn remove(&mut self, worker: &str) {
        self.rows.remove(worker);
        if self.live {
            self.redraw(Instant::now());
        }
    }

    /// Redraw the time columns (live mode; a no-op otherwise).
    pub fn tick(&mut self) {
        if self.live {
            self.redraw(Instant::now());
        }
    }

    fn redraw(&mut self, now: Instant) {
        let mut text = String::new();
        if self.drawn > 0 {
            // Back to the first line of the block drawn last time.
            text.push_str(&format!("\x1b[{}F", self.drawn));
        }
        for (worker, (stage, since)) in &self.rows {
            text.push_str(&format!(
                "\x1b[2K{worker:<24} {stage:<20} {:>6} (in stage {})\n",
                secs(now - self.started),
                secs(now - *since)
            ));
        }
        // Lines of an earlier, longer block.
        for _ in self.rows.len()..self.drawn {
            text.push_str("\x1b[2K\n");
        }
        self.drawn = self.rows.len().max(self.drawn);
        self.out.write_all(text.as_bytes()).ok();
        self.out.flush().ok();
    }

    /// The writer (tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_has_one_line_per_change_and_no_escapes() {
        let mut p = Progress::new(Vec::new(), false);
        p.set("ci-1", "booting");
        p.set("ci-2", "booting");
        p.set("ci-1", "booting");
        p.tick();
        p.set("ci-1", "ready");
        p.remove("ci-2");
        let text = String::from_utf8(p.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ci-1: booting ("), "{text}");
        assert!(lines[1].starts_with("ci-2: booting ("), "{text}");
        assert!(lines[2].starts_with("ci-1: ready ("), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn live_output_redraws_one_line_per_worker_in_place() {
        let mut p = Progress::new(Vec::new(), true);
        p.set("ci-1", "booting");
        p.set("ci-2", "waiting-cloud-init");
        p.set("ci-1", "ready");
        let text = String::from_utf8(p.into_inner()).unwrap();
        // Three redraws: 1 line, then 2 lines after moving up 1, then 2 after moving up 2.
        assert_eq!(text.matches("\x1b[1F").count(), 1, "{text:?}");
        assert_eq!(text.matches("\x1b[2F").count(), 1, "{text:?}");
        let last = text.rsplit("\x1b[2F").next().unwrap();
        let rows: Vec<&str> = last.lines().collect();
        assert_eq!(rows.len(), 2, "{last:?}");
        assert!(rows[0].starts_with("\x1b[2Kci-1") && rows[0].contains("ready"));
        assert!(rows[1].starts_with("\x1b[2Kci-2") && rows[1].contains("waiting-cloud-init"));
    }
}
