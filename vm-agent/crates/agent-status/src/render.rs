//! `vm-agent status` for people: every line at most 80 columns.

use crate::StatusReport;
use crate::time::{rfc3339, secs_between, short_duration};
use crate::{ArtifactReport, ArtifactState, ArtifactTrigger, DestroyState, JobRecord, JobState};
use std::fmt::Write;
use std::time::SystemTime;

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `3.4 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `text` over at most `max` lines of `width` columns, each prefixed with `indent`.
fn wrapped(o: &mut String, indent: &str, text: &str, width: usize, max: usize) {
    let chars: Vec<char> = text.chars().collect();
    for (n, chunk) in chars.chunks(width).enumerate() {
        if n + 1 == max && chars.len() > width * max {
            let line: String = chunk.iter().collect();
            let _ = writeln!(o, "{indent}{}", clip(&format!("{line}…"), width));
            break;
        }
        let line: String = chunk.iter().collect();
        let _ = writeln!(o, "{indent}{line}");
    }
}

fn short_sha(s: &str) -> &str {
    &s[..s.len().min(12)]
}

/// The artifacts block of `vm-agent status`: the boot state, then one line per pull (with
/// the reason of a failed or unavailable one wrapped over up to 3 lines).
fn render_artifacts(o: &mut String, a: &ArtifactReport) {
    let mut head = format!("artifacts: {}", a.state);
    if let Some(sha) = &a.sha {
        let _ = write!(
            head,
            " {} ({})",
            short_sha(sha),
            if a.required { "required" } else { "optional" }
        );
    }
    if let Some(s) = &a.store {
        let _ = write!(head, "  {s}");
    }
    let _ = writeln!(o, "{}", clip(&head, 80));
    let boot_item_has_reason = a.items.iter().any(|i| {
        Some(&i.sha) == a.sha.as_ref() && i.trigger == ArtifactTrigger::Boot && i.reason.is_some()
    });
    if let Some(d) = &a.detail
        && !boot_item_has_reason
    {
        wrapped(o, "  ", d, 76, 3);
    }
    for i in &a.items {
        let tail = if i.state == ArtifactState::Fetching {
            let pct = (i.bytes_done as f64 * 100.0 / i.bytes.max(1) as f64).min(100.0);
            format!(" {pct:.0}%")
        } else if i.verified {
            " verified".into()
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {:<12} {:<11} {:>5} files {:>10} {:>7} {}{}",
            short_sha(&i.sha),
            i.state,
            i.files,
            human_bytes(i.bytes),
            format!("{:.1}s", i.duration_secs),
            i.trigger,
            tail
        );
        if let Some(p) = &i.path {
            let _ = writeln!(o, "    {}", clip(p, 76));
        }
        if let Some(r) = &i.reason {
            wrapped(o, "    ", r, 76, 3);
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
}

fn when(now: SystemTime, t: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) => format!("in {}", short_duration(d.as_secs())),
        Err(e) => format!("{} ago", short_duration(e.duration().as_secs())),
    }
}

/// One line per job, fitting 80 columns.
pub fn job_line(j: &JobRecord, now: SystemTime) -> String {
    let age = match (j.started_at, j.finished_at) {
        (Some(s), Some(f)) => short_duration(secs_between(s, f)),
        (Some(s), None) => short_duration(secs_between(s, now)),
        _ => "-".into(),
    };
    let code = match (j.state, j.exit_code, j.signal) {
        (JobState::Queued | JobState::Running, _, _) => String::new(),
        (_, Some(c), _) => format!("rc={c}"),
        (_, None, Some(s)) => format!("sig={s}"),
        _ => String::new(),
    };
    format!(
        "{:>5}  {:<10} {:>7} {:<7} {}",
        j.id,
        j.state.as_str(),
        age,
        code,
        clip(&j.label(), 44)
    )
}

impl StatusReport {
    /// Human-readable status, every line at most 80 columns.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let now = self.now;
        let _ = writeln!(
            o,
            "{}  stage: {}  up {}  agent {}",
            clip(&self.hostname, 30),
            self.stage.as_str(),
            short_duration(self.uptime_secs),
            self.agent_version
        );
        if let Some(r) = &self.reason {
            let _ = writeln!(o, "  reason: {}", clip(r, 70));
        }
        if let Some(d) = &self.draining {
            let _ = writeln!(o, "  DRAINING: {}", clip(d, 68));
        }
        if !matches!(
            self.destroy.state,
            DestroyState::Armed | DestroyState::Draining
        ) {
            let _ = writeln!(
                o,
                "  SELF-DESTROY {}: {}",
                self.destroy.state.as_str().to_uppercase(),
                clip(self.destroy.detail.as_deref().unwrap_or(""), 50)
            );
        }
        let _ = writeln!(o, "stages:");
        let mut prev: Option<SystemTime> = None;
        for h in &self.history {
            let delta = prev
                .map(|p| format!("+{}", short_duration(secs_between(p, h.at))))
                .unwrap_or_default();
            prev = Some(h.at);
            let _ = writeln!(
                o,
                "  {:<19} {}  {:>7}  {}",
                h.stage.as_str(),
                &rfc3339(h.at)[..19],
                delta,
                clip(h.reason.as_deref().unwrap_or(""), 28)
            );
        }
        let ci = &self.cloud_init;
        let mut ci_line = format!(
            "cloud-init: {}",
            serde_json::to_value(ci.state)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        );
        if let Some(s) = &ci.stage {
            let _ = write!(ci_line, " ({s})");
        }
        if let Some(d) = &ci.datasource {
            let _ = write!(ci_line, "  {d}");
        }
        let _ = writeln!(o, "{}", clip(&ci_line, 80));
        for e in ci.errors.iter().take(3) {
            let _ = writeln!(o, "  error: {}", clip(e, 71));
        }
        render_artifacts(&mut o, &self.artifacts);
        let j = &self.jobs;
        let _ = writeln!(
            o,
            "jobs: {} running, {} queued, {} total (max {}), run as {} ({})",
            j.running,
            j.queued,
            j.total,
            j.max_concurrent,
            clip(&j.run_as.user, 12),
            j.run_as.uid
        );
        if let Some(n) = &j.run_as.note {
            let _ = writeln!(o, "  note: {}", clip(n, 72));
        }
        for r in j.recent.iter().rev().take(5) {
            let _ = writeln!(o, "{}", job_line(r, now));
        }
        match &self.hold {
            Some(h) => {
                let until = h
                    .until
                    .map(|u| when(now, u))
                    .unwrap_or_else(|| "until release".into());
                let _ = writeln!(
                    o,
                    "hold: {} (uid {}) {}",
                    until,
                    h.by_uid,
                    clip(h.reason.as_deref().unwrap_or(""), 40)
                );
            }
            None => {
                let _ = writeln!(o, "hold: none");
            }
        }
        let sessions: Vec<String> = self
            .sessions
            .iter()
            .map(|s| format!("{}@{}", s.user, s.tty.as_deref().unwrap_or("notty")))
            .collect();
        let _ = writeln!(
            o,
            "sessions: {}",
            if sessions.is_empty() {
                "none".into()
            } else {
                clip(&sessions.join(", "), 68)
            }
        );
        let _ = writeln!(
            o,
            "idle since: {}",
            self.idle_since
                .map(|t| when(now, t))
                .unwrap_or_else(|| "not idle".into())
        );
        for t in &self.timers {
            let at = t.fires_at.map(|f| when(now, f)).unwrap_or_default();
            let _ = writeln!(
                o,
                "  timer {:<12} {:>6}  {:<12} {}",
                t.name,
                clip(&t.limit, 6),
                at,
                clip(&t.state.to_string(), 36)
            );
        }
        let _ = writeln!(
            o,
            "destroy: {} ({})",
            self.destroy.provider, self.destroy.state
        );
        let s = &self.system;
        let _ = writeln!(
            o,
            "load {:.2} {:.2} {:.2}  mem {}/{} avail  disk {}/{} avail",
            s.load[0],
            s.load[1],
            s.load[2],
            gib(s.mem_available_bytes),
            gib(s.mem_total_bytes),
            gib(s.disk_available_bytes),
            gib(s.disk_total_bytes)
        );
        for k in &self.ssh_host_keys {
            let _ = writeln!(
                o,
                "hostkey {} {}",
                clip(&k.key_type, 19),
                clip(&k.fingerprint, 52)
            );
        }
        if let Some(c) = &self.callback {
            let _ = writeln!(o, "callback: {}", clip(c, 70));
        }
        o
    }
}
