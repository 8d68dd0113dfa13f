//! Logged-in SSH sessions, found without utmp: logind's session files
//! (`/run/systemd/sessions/<id>`) and a scan of `/proc` for sshd's per-session processes, whose
//! title is `sshd: USER@TTY` (`sshd-session: USER@TTY` with OpenSSH ≥ 9.8). Both roots are
//! configurable, and the daemon takes any [`SessionSource`], so tests inject their own.

use std::path::{Path, PathBuf};

/// The report type, defined once in the `agent-status` crate (the status report's contract).
pub use agent_status::Session;

/// Something that lists the open sessions.
pub trait SessionSource: Send + Sync {
    fn sessions(&self) -> Vec<Session>;
}

/// logind + /proc, the production source.
pub struct SystemSessions {
    pub logind_dir: PathBuf,
    pub proc_dir: PathBuf,
}

impl SessionSource for SystemSessions {
    fn sessions(&self) -> Vec<Session> {
        let mut out = logind_sessions(&self.logind_dir);
        for s in proc_sessions(&self.proc_dir) {
            if !out.iter().any(|o| o.user == s.user && o.tty == s.tty) {
                out.push(s);
            }
        }
        out
    }
}

fn logind_sessions(dir: &Path) -> Vec<Session> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id.starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
        };
        let remote =
            get("REMOTE").as_deref() == Some("1") || get("SERVICE").as_deref() == Some("sshd");
        let closing = get("STATE").as_deref() == Some("closing");
        let user_class = get("CLASS").is_none_or(|c| c == "user");
        if remote && !closing && user_class {
            out.push(Session {
                user: get("USER").unwrap_or_else(|| get("UID").unwrap_or_default()),
                tty: get("TTY")
                    .filter(|t| !t.is_empty())
                    .map(|t| t.trim_start_matches("/dev/").to_string()),
                source: "logind".into(),
                id,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Parse an sshd session process title: `sshd: alice@pts/0` → (alice, Some(pts/0)).
pub fn parse_sshd_title(title: &str) -> Option<(String, Option<String>)> {
    let rest = title
        .strip_prefix("sshd: ")
        .or_else(|| title.strip_prefix("sshd-session: "))?;
    let word = rest.split_whitespace().next()?;
    let (user, tty) = word.split_once('@')?;
    if user.is_empty() {
        return None;
    }
    let tty = (tty != "notty" && !tty.is_empty()).then(|| tty.to_string());
    Some((user.to_string(), tty))
}

fn proc_sessions(proc_dir: &Path) -> Vec<Session> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return vec![];
    };
    let mut out = vec![];
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let first = raw.split(|b| *b == 0).next().unwrap_or(&[]);
        let title = String::from_utf8_lossy(first);
        if let Some((user, tty)) = parse_sshd_title(title.trim()) {
            out.push(Session {
                user,
                tty,
                source: "proc".into(),
                id: pid,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Write `message` to every session's terminal (best effort, like `wall`). Returns how many
/// terminals were written.
pub fn warn_sessions(sessions: &[Session], dev_dir: &Path, message: &str) -> usize {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut n = 0;
    let mut seen = vec![];
    for s in sessions {
        let Some(tty) = &s.tty else { continue };
        if tty.contains("..") || seen.contains(tty) {
            continue;
        }
        seen.push(tty.clone());
        let path = dev_dir.join(tty);
        let res = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("\r\n{message}\r\n").as_bytes()));
        match res {
            Ok(()) => n += 1,
            Err(e) => tracing::debug!("cannot warn {}: {e}", path.display()),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_titles() {
        assert_eq!(
            parse_sshd_title("sshd: ci@pts/0"),
            Some(("ci".into(), Some("pts/0".into())))
        );
        assert_eq!(
            parse_sshd_title("sshd-session: ci@notty"),
            Some(("ci".into(), None))
        );
        assert_eq!(parse_sshd_title("sshd: ci [priv]"), None);
        assert_eq!(
            parse_sshd_title("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100"),
            None
        );
        assert_eq!(parse_sshd_title("bash"), None);
    }

    #[test]
    fn logind_and_proc_are_merged() {
        let d = tempfile::tempdir().expect("tempdir");
        let logind = d.path().join("sessions");
        let proc_dir = d.path().join("proc");
        std::fs::create_dir_all(&logind).expect("mkdir");
        std::fs::create_dir_all(proc_dir.join("4242")).expect("mkdir");
        std::fs::create_dir_all(proc_dir.join("4243")).expect("mkdir");
        std::fs::write(
            logind.join("3"),
            "UID=1000\nUSER=alice\nACTIVE=1\nSTATE=active\nREMOTE=1\nTYPE=tty\nCLASS=user\nTTY=/dev/pts/1\nSERVICE=sshd\n",
        )
        .expect("write");
        std::fs::write(logind.join("c1"), "USER=gdm\nCLASS=greeter\nREMOTE=0\n").expect("write");
        std::fs::write(proc_dir.join("4242/cmdline"), b"sshd: alice@pts/1\0\0").expect("write");
        std::fs::write(proc_dir.join("4243/cmdline"), b"sshd: bob@notty\0").expect("write");
        let src = SystemSessions {
            logind_dir: logind,
            proc_dir,
        };
        let s = src.sessions();
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].user, "alice");
        assert_eq!(s[0].source, "logind");
        assert_eq!(s[1].user, "bob");
        assert_eq!(s[1].tty, None);
        let dev = d.path().join("dev");
        std::fs::create_dir_all(dev.join("pts")).expect("mkdir");
        std::fs::write(dev.join("pts/1"), "").expect("write");
        assert_eq!(warn_sessions(&s, &dev, "going down"), 1);
        assert!(
            std::fs::read_to_string(dev.join("pts/1"))
                .expect("read")
                .contains("going down")
        );
    }
}
