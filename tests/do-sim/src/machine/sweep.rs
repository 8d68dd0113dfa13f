//! Run directories, the process marker, and the sweeper for killed runs.
//!
//! Every simulator in machine mode owns one run directory,
//! `<state_dir>/run-<pid>-<n>/`, whose `owner` file holds the owning process's pid
//! and start time (field 22 of `/proc/<pid>/stat`, so a reused pid is not
//! mistaken for the owner). Every process it starts for a droplet (the
//! `systemd-nspawn` supervisor and, through `--setenv`, the container's init)
//! carries `DO_SIM_MACHINE=<run>:<droplet id>` in its environment, and nspawn
//! also in its argv. nspawn's machine names are `<run>-<droplet id>` with the
//! `run-` prefix replaced by `dosim-`, and nspawn keeps two files on the host per
//! machine, `/run/systemd/nspawn/propagate/<machine>` and a lock under
//! `/run/systemd/nspawn/locks/`, which it leaves behind when it is killed.
//!
//! [`sweep`] removes whatever a dead owner left: it kills the marked processes,
//! removes nspawn's two files and deletes the run directory. Nothing else is
//! left by a killed run: the overlay mounts live in private mount namespaces
//! and the network namespaces are unnamed, so both vanish with the processes.
//!
//! Each run also starts a [`Reaper`]: a shell in its own process group (so the
//! terminal's Ctrl-C does not reach it) that blocks reading a pipe only the
//! simulator writes to. When the simulator's process ends, however it ends, the
//! pipe closes and the reaper does what [`sweep`] would for this run. So a
//! Ctrl-C'd or killed test leaves nothing behind a moment later; the sweeper
//! is for what even the reaper could not do (it was killed too, the machine
//! went down).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Environment variable that marks every process of a droplet.
pub const MARKER_ENV: &str = "DO_SIM_MACHINE";
/// Where nspawn keeps a directory per running machine.
pub const NSPAWN_PROPAGATE: &str = "/run/systemd/nspawn/propagate";
/// Written in a droplet's directory: the nspawn lock file of its root, to remove
/// when nspawn did not.
pub const LOCK_NOTE: &str = "nspawn-lock";

const RUN_PREFIX: &str = "run-";
const MACHINE_PREFIX: &str = "dosim-";
const OWNER_FILE: &str = "owner";

/// One simulator's run directory (see the module docs).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// `run-<pid>-<n>`.
    pub name: String,
}

impl RunDir {
    /// Create a fresh run directory under `state_dir` and write its owner file.
    pub fn create(state_dir: &Path) -> io::Result<RunDir> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let pid = std::process::id();
        let started = start_time(pid)?;
        fs::create_dir_all(state_dir)?;
        loop {
            let name = format!("{RUN_PREFIX}{pid}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let path = state_dir.join(&name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::write(path.join(OWNER_FILE), format!("{pid} {started}\n"))?;
                    return Ok(RunDir { path, name });
                }
                // Left by an earlier process with this pid; the sweep removes it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The value of [`MARKER_ENV`] for one droplet.
    pub fn marker(&self, droplet_id: u64) -> String {
        format!("{}:{droplet_id}", self.name)
    }

    /// nspawn's machine name for one droplet (also its first hostname).
    pub fn machine_name(&self, droplet_id: u64) -> String {
        machine_name(&self.name, droplet_id)
    }
}

fn machine_name(run: &str, droplet_id: u64) -> String {
    let short = run.strip_prefix(RUN_PREFIX).unwrap_or(run);
    format!("{MACHINE_PREFIX}{short}-{droplet_id}")
}

/// The bytes that mark a process of one droplet (`Some`) or of any droplet of the run.
pub fn needle(run: &str, droplet_id: Option<u64>) -> Vec<u8> {
    match droplet_id {
        // The NUL ends the argv/environ entry, so droplet 4 does not match 40.
        Some(id) => format!("{MARKER_ENV}={run}:{id}\0").into_bytes(),
        None => format!("{MARKER_ENV}={run}:").into_bytes(),
    }
}

/// A process, told apart from a later one with the same pid by its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub started: u64,
}

impl Proc {
    /// Still there and not a zombie. A killed container's init stays for a
    /// moment after its environment is gone, while the kernel ends its PID
    /// namespace, so "no longer marked" is not yet "gone".
    pub fn alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let started = fields.nth(18).and_then(|f| f.parse::<u64>().ok());
        started == Some(self.started) && !matches!(state, Some("Z" | "X") | None)
    }
}

/// SIGKILL every process whose environment or argv contains `needle`; returns
/// the ones signalled. Zombies have neither and are not matched.
pub fn kill_marked(needle: &[u8]) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut signalled = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let marked = ["environ", "cmdline"].iter().any(|f| {
            fs::read(entry.path().join(f))
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
        });
        let (Ok(raw), Ok(started)) = (i32::try_from(pid), start_time(pid)) else {
            continue;
        };
        if marked && kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
            signalled.push(Proc { pid, started });
        }
    }
    signalled
}

/// Kill marked processes until every one of them is gone (or `limit` has
/// passed); returns whether they are all gone.
pub fn kill_until_gone(needle: &[u8], limit: Duration) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    let mut dying: Vec<Proc> = Vec::new();
    loop {
        let fresh = kill_marked(needle);
        let none_marked = fresh.is_empty();
        dying.extend(fresh);
        dying.retain(Proc::alive);
        if none_marked && dying.is_empty() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Remove what nspawn keeps on the host for one machine when it did not itself
/// (it was killed): its propagation directory and the lock recorded in
/// `droplet_dir`.
pub fn remove_nspawn_leftovers(machine: &str, droplet_dir: &Path) {
    let _ = fs::remove_dir_all(Path::new(NSPAWN_PROPAGATE).join(machine));
    if let Ok(lock) = fs::read_to_string(droplet_dir.join(LOCK_NOTE)) {
        let _ = fs::remove_file(lock.trim());
    }
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain anything.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no start time in /proc/{pid}/stat")))
}

/// Whether the run directory's owner still runs.
fn owner_alive(run_dir: &Path, name: &str) -> bool {
    let pid_from_name = name
        .strip_prefix(RUN_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok());
    match fs::read_to_string(run_dir.join(OWNER_FILE)) {
        Ok(text) => {
            let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
            match (fields.next().flatten(), fields.next().flatten()) {
                (Some(pid), Some(started)) => {
                    u32::try_from(pid).is_ok_and(|pid| Proc { pid, started }.alive())
                }
                _ => false,
            }
        }
        // Created but the owner file not yet written: only a live process is
        // between those two steps.
        Err(_) => pid_from_name.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()),
    }
}

/// What one [`sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Run directories removed.
    pub runs: Vec<PathBuf>,
    /// Processes killed.
    pub processes: usize,
}

/// Remove the leftovers of every run under `state_dir` whose owner is gone (see
/// the module docs). Runs of live processes are left alone.
pub fn sweep(state_dir: &Path) -> io::Result<Swept> {
    let mut swept = Swept::default();
    // Cgroups of boots whose run was killed: only those no process is left in.
    for parent in super::container::cgroup_parents().unwrap_or_default() {
        for entry in fs::read_dir(&parent).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(super::container::CGROUP_PREFIX))
                && super::container::cgroup_unused(&path)
            {
                super::container::remove_cgroup(&path);
            }
        }
    }
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = entry.path();
        if !name.starts_with(RUN_PREFIX) || !path.is_dir() || owner_alive(&path, &name) {
            continue;
        }
        let needle = needle(&name, None);
        swept.processes += kill_marked(&needle).len();
        if !kill_until_gone(&needle, Duration::from_secs(10)) {
            tracing::warn!(run = %name, "processes of a dead run survive SIGKILL; leaving its directory");
            continue;
        }
        remove_run_leftovers(&path, &name);
        match fs::remove_dir_all(&path) {
            Ok(()) => swept.runs.push(path),
            Err(e) => tracing::warn!(run = %path.display(), error = %e, "cannot remove a dead run"),
        }
    }
    Ok(swept)
}

/// What the reaper runs: `$1` run directory, `$2` run name, `$3` machine-name
/// prefix. The marker pattern is built at run time (`[:]`), so neither the
/// reaper's argv nor grep's contains the marker itself.
const REAPER_SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
marker="DO_SIM_MACHINE=$2[:]"
i=0
while [ $i -lt 100 ]; do
  pids=$(grep -ls "$marker" /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | sort -u)
  [ -z "$pids" ] && break
  kill -9 $pids 2>/dev/null
  sleep 0.1
  i=$((i + 1))
done
for note in "$1"/droplets/*/nspawn-lock; do
  [ -f "$note" ] && rm -f "$(cat "$note")"
done
rm -rf /run/systemd/nspawn/propagate/"$3"*
rm -rf "$1"
"#;

/// The run's reaper (see the module docs). Dropping it closes the pipe: the
/// reaper then cleans up whatever is left and exits.
#[derive(Debug)]
pub struct Reaper {
    child: std::process::Child,
}

impl Reaper {
    pub fn start(run: &RunDir) -> io::Result<Reaper> {
        use std::os::unix::process::CommandExt;
        let short = run.name.strip_prefix(RUN_PREFIX).unwrap_or(&run.name);
        let child = std::process::Command::new("sh")
            .args(["-c", REAPER_SCRIPT, "do-sim-reaper"])
            .arg(&run.path)
            .arg(&run.name)
            .arg(format!("{MACHINE_PREFIX}{short}-"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir("/")
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Reaper { child })
    }

    /// Close the pipe and wait for the reaper (the run is already cleaned up).
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// nspawn's host files for every droplet directory of a run.
pub fn remove_run_leftovers(run_dir: &Path, run: &str) {
    let Ok(droplets) = fs::read_dir(run_dir.join("droplets")) else {
        return;
    };
    for d in droplets.flatten() {
        if let Some(id) = d.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
            remove_nspawn_leftovers(&machine_name(run, id), &d.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_needles() {
        assert_eq!(
            machine_name("run-12-3", 400_000_001),
            "dosim-12-3-400000001"
        );
        assert_eq!(needle("run-12-3", Some(4)), b"DO_SIM_MACHINE=run-12-3:4\0");
        assert_eq!(needle("run-12-3", None), b"DO_SIM_MACHINE=run-12-3:");
    }

    #[test]
    fn own_start_time_is_read_and_the_own_run_is_alive() {
        let me = std::process::id();
        assert!(start_time(me).is_ok_and(|t| t > 0));
        let dir = std::env::temp_dir().join(format!("do-sim-sweep-unit-{me}"));
        let run = RunDir::create(&dir).expect("run dir");
        assert!(owner_alive(&run.path, &run.name));
        // A dead owner: no process started at the end of time.
        let dead = dir.join("run-1-1");
        fs::create_dir_all(&dead).expect("dir");
        fs::write(dead.join(OWNER_FILE), format!("1 {}\n", u64::MAX)).expect("owner");
        assert!(!owner_alive(&dead, "run-1-1"));
        let swept = sweep(&dir).expect("sweep");
        assert_eq!(swept.runs, vec![dead]);
        assert!(run.path.is_dir(), "a live run is left alone");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
