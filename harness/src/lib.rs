//! A child process as the whole-system tests and the load generator drive one: its
//! output read line by line on threads of its own (so a test or the harness waits
//! for a line with a deadline, and a child that writes a lot never blocks on a full
//! pipe), and killed if it is still running when dropped, so a failing test or a
//! killed harness leaves nothing behind.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{self, BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A running child whose stdout (and stderr, when asked) arrive as lines.
#[derive(Debug)]
pub struct Process {
    child: Child,
    stdout: Receiver<String>,
    stderr: Option<Receiver<String>>,
}

/// Where the child's stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Read line by line, like stdout ([`Process::stderr_line`]).
    Lines,
    /// Into this process's stderr, as it comes.
    Inherit,
}

impl Process {
    /// Starts `command` with its stdout piped (and its stdin piped too, for
    /// [`Process::take_stdin`]), and its stderr as `stderr` says.
    pub fn spawn(command: &mut Command, stderr: Stderr) -> io::Result<Self> {
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        command.stderr(match stderr {
            Stderr::Lines => Stdio::piped(),
            Stderr::Inherit => Stdio::inherit(),
        });
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().map(lines).expect("stdout is piped");
        let stderr = child.stderr.take().map(lines);
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, once: dropping it closes the pipe.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The next stdout line, waiting at most `patience`; `None` if none came (the
    /// child may have ended).
    pub fn stdout_line(&self, patience: Duration) -> Option<String> {
        next(&self.stdout, patience)
    }

    /// The next stderr line, waiting at most `patience`; `None` if none came, or
    /// stderr is not read as lines.
    pub fn stderr_line(&self, patience: Duration) -> Option<String> {
        next(self.stderr.as_ref()?, patience)
    }

    /// Every stderr line still to come, until the child closes its stderr.
    pub fn rest_of_stderr(&self) -> Vec<String> {
        self.stderr
            .as_ref()
            .map(|lines| lines.iter().collect())
            .unwrap_or_default()
    }

    /// How the child ended, if it has.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits at most `patience` for the child to end; `None` if it is still
    /// running.
    pub fn wait_within(&mut self, patience: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the child, if it still runs, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn next(lines: &Receiver<String>, patience: Duration) -> Option<String> {
    lines.recv_timeout(patience).ok()
}

/// The lines of `stream`, read on a thread of their own until it ends.
fn lines(stream: impl io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn both_outputs_arrive_as_lines_in_order() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo one; echo two; echo oops >&2"]);
        let mut child = Process::spawn(&mut command, Stderr::Lines).expect("sh runs");
        assert_eq!(child.stdout_line(PATIENCE).as_deref(), Some("one"));
        assert_eq!(child.stdout_line(PATIENCE).as_deref(), Some("two"));
        assert_eq!(child.stderr_line(PATIENCE).as_deref(), Some("oops"));
        assert!(child.wait_within(PATIENCE).expect("waited").is_some());
        assert_eq!(child.stdout_line(Duration::from_millis(100)), None);
    }

    #[test]
    fn closing_stdin_is_how_a_child_is_told_to_stop() {
        let mut command = Command::new("sh");
        command.args(["-c", "read line; echo got $line"]);
        let mut child = Process::spawn(&mut command, Stderr::Inherit).expect("sh runs");
        let stdin = child.take_stdin().expect("stdin is piped");
        drop(stdin);
        assert_eq!(child.stdout_line(PATIENCE).as_deref(), Some("got"));
        assert!(child.wait_within(PATIENCE).expect("waited").is_some());
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let mut command = Command::new("sleep");
        command.arg("600");
        let child = Process::spawn(&mut command, Stderr::Inherit).expect("sleep runs");
        let pid = child.id();
        drop(child);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the child is gone"
        );
    }
}
