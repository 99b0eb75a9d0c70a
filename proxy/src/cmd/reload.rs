//! `nfs-tls-proxy reload --pid-file FILE`: signals the running proxy (SIGHUP) and waits for the outcome
//! it records next to its pid file (`FILE.reload`), so that `systemctl reload` and `service reload`
//! fail loudly when the new material was refused. The proxy side of it is [`StatusFile`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The pid file and the reload outcome file of a running proxy (`--pid-file`).
#[derive(Debug)]
pub(crate) struct StatusFile {
    pid_file: PathBuf,
    /// The pid file, opened before the privilege drop (its directory may be root's).
    pid: std::fs::File,
    status: PathBuf,
    /// Reloads begun so far.
    generation: u64,
    /// The last whole outcome line, kept first in the file while a reload runs.
    last: String,
}

/// Why `reload` could not tell the outcome, or the reload failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("cannot signal process {pid} (from {path}): {detail}")]
    Signal { pid: i32, path: PathBuf, detail: String },
    #[error("process {pid} recorded no reload outcome in {path} within {waited:?}")]
    NoAnswer { pid: i32, path: PathBuf, waited: Duration },
    #[error("{0}")]
    Failed(String),
}

fn status_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".reload");
    PathBuf::from(s)
}

impl StatusFile {
    /// Opens (creating them when missing) the pid file and the outcome file next to it, the latter
    /// handed to `owner` (the user the proxy will run as), so that reloads after the privilege drop
    /// can still record. Nothing is written until [`Self::publish`]: while a hand-over is under way
    /// both still name the running proxy, and a start that fails leaves them so.
    pub(crate) fn create(pid_file: &Path, owner: Option<(u32, u32)>) -> Result<Self, ReloadError> {
        let err = |path: &Path, e: std::io::Error| ReloadError::File {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(|e| err(path, e))
        };
        let status = status_path(pid_file);
        let pid = open(pid_file)?;
        open(&status)?;
        // Only the outcome file goes to the user run as; the pid file stays root's, so that user
        // cannot point a root `reload` at another process (we keep it open to write it later).
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&status, Some(uid), Some(gid)).map_err(|e| err(&status, e))?;
        }
        Ok(Self { pid_file: pid_file.to_owned(), pid, status, generation: 0, last: "0 started\n".into() })
    }

    /// Ready (a predecessor has confirmed the hand-over, or there was none): our pid into the pid
    /// file and `0 started` into the outcome file, which is what `service restart` waits for.
    pub(crate) fn publish(&self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.pid.set_len(0)?;
        self.pid.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        self.write(&self.last)
    }

    /// Marks a reload as begun: `GENERATION running`, with the next generation, on a second line
    /// behind the last outcome (a `reload` older than this line reads only the first). A `reload`
    /// that read the file before this was written waits for this generation's outcome, which is
    /// then sure to have read the files after the operator changed them; one that read it after
    /// waits for the next (see [`outcome_after`]).
    pub(crate) fn begin(&mut self) -> std::io::Result<()> {
        self.generation += 1;
        self.write(&format!("{}{} running\n", self.last, self.generation))
    }

    /// Records the outcome of the reload [`Self::begin`] marked: `GENERATION ok|failed MESSAGE` on one line.
    pub(crate) fn record(&mut self, outcome: &Result<String, String>) -> std::io::Result<()> {
        self.last = match outcome {
            Ok(m) => format!("{} ok {}\n", self.generation, one_line(m)),
            Err(m) => format!("{} failed {}\n", self.generation, one_line(m)),
        };
        self.write(&self.last)
    }

    fn write(&self, line: &str) -> std::io::Result<()> {
        // Written in place (not renamed): the directory may not be writable after the privilege drop.
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&self.status)?;
        f.write_all(line.as_bytes())
    }

    /// Removes both files at exit.
    pub(crate) fn remove(self) {
        let _ = std::fs::remove_file(&self.status);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The generation and the rest of the file's last line (a reload's outcome, or `running`), if the
/// file holds whole lines.
fn read_status(path: &Path) -> Result<Option<(u64, String)>, ReloadError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReloadError::File {
        path: path.to_owned(),
        detail: format!("{e} (was the proxy started with --pid-file?)"),
    })?;
    let Some(lines) = text.strip_suffix('\n') else { return Ok(None) };
    let line = lines.rsplit('\n').next().unwrap_or(lines);
    let (generation, rest) = line.split_once(' ').unwrap_or((line, ""));
    Ok(generation.parse().ok().map(|g| (g, rest.to_owned())))
}

/// Signals the proxy whose pid is in `pid_file` and waits up to `timeout` for its outcome: the
/// success message, or the failure as an error.
pub(crate) async fn run(pid_file: &Path, timeout: Duration) -> Result<String, ReloadError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| ReloadError::File { path: pid_file.to_owned(), detail: e.to_string() })?;
    // Never 0, -1 or 1: kill(2) would signal a process group, every process, or init.
    let pid: i32 = text.trim().parse().ok().filter(|&p: &i32| p > 1).ok_or_else(|| ReloadError::File {
        path: pid_file.to_owned(),
        detail: format!("{:?} is not a process id", text.trim()),
    })?;
    let status = status_path(pid_file);
    // A record being written at this moment reads as incomplete: look again briefly.
    let mut before = None;
    for _ in 0..20 {
        before = read_status(&status)?.map(|(g, _)| g);
        if before.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = before.unwrap_or(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
        .map_err(|e| ReloadError::Signal { pid, path: pid_file.to_owned(), detail: e.desc().to_owned() })?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(outcome) = outcome_after(before, read_status(&status)?) {
            return outcome;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ReloadError::NoAnswer { pid, path: status, waited: timeout });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcome of a reload that began after the outcome file read `before`, if `now` holds one. Every
/// reload, by SIGHUP or by `--reload-every`, writes `GENERATION running` as it begins, so one with
/// a later generation began after `reload` looked and read the files the operator had changed; a
/// reload already running when `reload` looked (its generation is `before`) may have read them too
/// early and is not reported. A proxy older than the `running` line records only at the end: the
/// next generation is taken, as before.
fn outcome_after(before: u64, now: Option<(u64, String)>) -> Option<Result<String, ReloadError>> {
    let (generation, rest) = now?;
    if generation <= before || rest == "running" {
        return None;
    }
    Some(match rest.split_once(' ') {
        Some(("ok", message)) => Ok(message.to_owned()),
        Some((_, message)) => Err(ReloadError::Failed(message.to_owned())),
        None => Err(ReloadError::Failed(rest)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(generation: u64, rest: &str) -> Option<(u64, String)> {
        Some((generation, rest.to_owned()))
    }

    #[test]
    fn a_reload_that_was_already_running_when_reload_looked_is_not_reported() {
        // Read "3 running" (a --reload-every reload under way), then SIGHUP.
        let before = 3;
        assert!(outcome_after(before, at(3, "running")).is_none());
        assert!(outcome_after(before, at(3, "ok reloaded: none")).is_none(), "the earlier reload's outcome");
        assert!(outcome_after(before, at(4, "running")).is_none());
        match outcome_after(before, at(4, "failed reload failed: bad CRL")) {
            Some(Err(ReloadError::Failed(m))) => assert_eq!(m, "reload failed: bad CRL"),
            other => panic!("want the failure of generation 4, got {other:?}"),
        }
    }

    #[test]
    fn a_timer_reload_that_began_after_reload_looked_counts_as_its_answer() {
        match outcome_after(3, at(4, "ok reloaded: CA")) {
            Some(Ok(m)) => assert_eq!(m, "reloaded: CA"),
            other => panic!("want generation 4's success, got {other:?}"),
        }
    }

    #[test]
    fn begin_and_record_write_whole_lines_that_an_older_reload_reads_too() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pid_file = dir.path().join("p.pid");
        let mut status = StatusFile::create(&pid_file, None).expect("create");
        let path = status_path(&pid_file);
        // Nothing before publish: a hand-over in progress leaves the running proxy's files alone.
        assert_eq!(read_status(&path).expect("read"), None);
        assert_eq!(std::fs::read_to_string(&pid_file).expect("pid"), "");
        status.publish().expect("publish");
        assert_eq!(std::fs::read_to_string(&pid_file).expect("pid"), format!("{}\n", std::process::id()));
        assert_eq!(read_status(&path).expect("read"), at(0, "started"));
        status.begin().expect("begin");
        assert_eq!(read_status(&path).expect("read"), at(1, "running"));
        // What a `reload` older than the running line reads: the last outcome, still generation 0.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "0 started\n1 running\n");
        status.record(&Err("reload failed: key\nmismatch".into())).expect("record");
        assert_eq!(read_status(&path).expect("read"), at(1, "failed reload failed: key mismatch"));
        status.begin().expect("begin");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "1 failed reload failed: key mismatch\n2 running\n"
        );
    }
}
