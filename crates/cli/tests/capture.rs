//! `nimbus run --checkpoint-on-signal` captures a running program at a blocking
//! call, and `nimbus run --restore` goes on from the checkpoint in another OS
//! process: the two outputs together are an uninterrupted run's, byte for byte.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{end_with_test, guest, lines, nimbus, outcome, run_with_input};

/// How long a test waits for one line or for a process to end.
const BOUND: Duration = Duration::from_secs(60);

/// A `nimbus run` whose stdin stays open and whose stdout and stderr are read
/// line by line as they come.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        end_with_test(&mut command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nimbus starts");
        Running {
            stdin: child.stdin.take(),
            stdout: lines(child.stdout.take().unwrap()),
            stderr: lines(child.stderr.take().unwrap()),
            child,
        }
    }

    /// The stdout lines up to and including `last`.
    fn stdout_until(&self, last: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .stdout
                .recv_timeout(BOUND)
                .unwrap_or_else(|e| panic!("no {last:?} on stdout after {seen:?}: {e}"));
            seen.push(line.clone());
            if line == last {
                return seen;
            }
        }
    }

    /// The next stderr line containing `part`.
    fn stderr_with(&self, part: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(BOUND)
                .unwrap_or_else(|e| panic!("no stderr line with {part:?}: {e}"));
            if line.contains(part) {
                return line;
            }
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success());
    }

    /// Waits for the end, stdin still open (closing it would end a read the
    /// capture is to stop): the exit code, the rest of stdout, and all of stderr.
    fn end(self) -> (Option<i32>, Vec<String>, String) {
        let (done, ended) = channel();
        let mut child = self.child;
        std::thread::spawn(move || {
            let _ = done.send(child.wait().unwrap());
        });
        let status = ended.recv_timeout(BOUND).expect("nimbus ends");
        drop(self.stdin);
        let rest = self.stdout.iter().collect();
        let stderr = self.stderr.iter().collect::<Vec<_>>().join("\n");
        (status.code(), rest, stderr)
    }
}

/// `program` run to the end without a capture: its stdout and exit code.
fn uninterrupted(program: &Path, args: &[&str], stdin: &[u8]) -> (String, Option<i32>) {
    let mut command = nimbus(&["run"]);
    command.arg(program).arg("--").args(args);
    let (stdout, stderr, code) = outcome(&run_with_input(command, stdin));
    assert!(stderr.is_empty(), "{stderr}");
    (stdout, code)
}

/// Runs `program` capturable, captures it once it printed `ready`, and returns what
/// it printed before.
fn captured(program: &Path, args: &[&str], checkpoint: &Path) -> String {
    let mut command = nimbus(&["run", "--checkpoint-on-signal"]);
    command.arg(checkpoint).arg(program).arg("--").args(args);
    let run = Running::start(command);
    let mut printed = run.stdout_until("ready");
    run.signal("-USR1");
    let (code, rest, stderr) = run.end();
    assert_eq!(code, Some(138), "{stderr}");
    assert!(stderr.contains("checkpoint written to"), "{stderr}");
    printed.extend(rest);
    printed.iter().map(|line| format!("{line}\n")).collect()
}

/// `nimbus run --restore CHECKPOINT PROGRAM` with `stdin`.
fn restore(program: &Path, checkpoint: &Path, stdin: &[u8]) -> (String, String, Option<i32>) {
    let mut command = nimbus(&["run", "--restore"]);
    command.arg(checkpoint).arg(program);
    outcome(&run_with_input(command, stdin))
}

#[test]
fn a_rust_program_captured_reading_stdin_goes_on_in_another_process() {
    let program = guest("capture-check");
    let (whole, code) = uninterrupted(&program, &["4"], b"line one\n");
    assert_eq!(code, Some(3));
    assert!(whole.contains("memory kept\nclock monotonic\n"), "{whole}");

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("rust.ckpt");
    let before = captured(&program, &["4"], &checkpoint);
    let (after, stderr, code) = restore(&program, &checkpoint, b"line one\n");
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(before + &after, whole);
}

#[test]
fn a_c_program_captured_sleeping_goes_on_in_another_process() {
    let program = guest("c-capture-check");
    // Long enough that the signal, sent once "ready" is read, lands within the sleep
    // on a loaded machine (a restored sleep starts again whole).
    let args = ["2", "5000"];
    let (whole, code) = uninterrupted(&program, &args, b"");
    assert_eq!(code, Some(7));
    assert!(whole.contains("memory kept\nclock monotonic\n"), "{whole}");

    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("c.ckpt");
    let before = captured(&program, &args, &checkpoint);
    let (after, stderr, code) = restore(&program, &checkpoint, b"");
    assert_eq!(code, Some(7), "{stderr}");
    assert_eq!(before + &after, whole);
}

#[test]
fn a_damaged_checkpoint_or_one_of_another_module_is_refused() {
    let program = guest("capture-check");
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("good.ckpt");
    captured(&program, &["1"], &checkpoint);

    let other = guest("c-capture-check");
    let (stdout, stderr, code) = restore(&other, &checkpoint, b"");
    assert_eq!(code, Some(139), "{stderr}");
    assert!(stderr.contains("another module"), "{stderr}");
    assert!(stdout.is_empty());

    let mut bytes = std::fs::read(&checkpoint).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = dir.path().join("damaged.ckpt");
    std::fs::write(&damaged, &bytes).unwrap();
    let (stdout, stderr, code) = restore(&program, &damaged, b"line\n");
    assert_eq!(code, Some(139), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    assert!(stdout.is_empty());
}

#[test]
fn a_program_that_cannot_be_captured_says_so_and_keeps_running() {
    // A module asyncify has transformed already cannot be transformed again.
    let dir = tempfile::tempdir().unwrap();
    let transformed = dir.path().join("transformed.wasm");
    let made = Command::new("wasm-opt")
        .arg(guest("capture-check"))
        .args(["--asyncify", "-O1", "-o"])
        .arg(&transformed)
        .status()
        .expect("wasm-opt runs (scripts/setup.sh installs binaryen)");
    assert!(made.success());
    let (whole, _) = uninterrupted(&transformed, &["1"], b"go on\n");

    let mut command = nimbus(&["run", "--checkpoint-on-signal"]);
    command
        .arg(dir.path().join("never.ckpt"))
        .arg(&transformed)
        .args(["--", "1"]);
    let mut run = Running::start(command);
    let mut printed = run.stdout_until("ready");
    run.signal("-USR1");
    let refusal = run.stderr_with("cannot be captured");
    assert!(refusal.contains("asyncify"), "{refusal}");
    run.stdin.as_mut().unwrap().write_all(b"go on\n").unwrap();
    let (code, rest, stderr) = run.end();
    assert_eq!(code, Some(3), "{stderr}");
    printed.extend(rest);
    let printed: String = printed.iter().map(|line| format!("{line}\n")).collect();
    assert_eq!(printed, whole);
    assert!(!dir.path().join("never.ckpt").exists());
}
