//! The shared vocabulary of nimbus: process and host ids, process states and exit
//! statuses, per-process limits, and the parsing of sizes and durations.
//!
//! Owns: plain data types every other crate agrees on.
//! Must not: depend on wasmtime, tokio or any other nimbus crate; do I/O.

use std::fmt;
use std::time::Duration;

mod parse;

pub use parse::{ParseError, parse_duration, parse_size};

/// Identifies a host (a worker) in a cluster. The embedded default numbers its
/// in-process hosts from 1. Ids fit in [`HostId::BITS`] bits, the top bits of a
/// [`Pid`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct HostId(pub u32);

impl HostId {
    /// How many bits a host id has: about a million joins over a cluster's life.
    pub const BITS: u32 = 20;

    /// The embedded host of a `nimbus up` that runs a local cluster beside it, and
    /// the largest id. A planner assigns ids below it, so the pids of the two never
    /// meet.
    pub const BESIDE_CLUSTER: HostId = HostId((1 << Self::BITS) - 1);
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host-{}", self.0)
    }
}

/// A cluster-unique process id.
///
/// The host that creates a process mints its id: the top 20 bits (of 63) hold the
/// creating host, the low 43 bits a per-host sequence number (seven years of
/// spawns at 40,000 a second). Ids are unique without any
/// coordination and always positive as an `i64`, which is how guests see them. The
/// creating host is only where a pid was minted, not where the process runs now
/// (processes may move), so routing must not rely on it once migration exists.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Pid(u64);

impl Pid {
    /// Bits of the per-host sequence number; the host id sits above them.
    pub const SEQ_BITS: u32 = 63 - HostId::BITS;

    /// Mints the pid with sequence number `seq` on `host`.
    pub fn new(host: HostId, seq: u64) -> Pid {
        debug_assert!(seq < (1 << Self::SEQ_BITS) && seq > 0);
        debug_assert!(host <= HostId::BESIDE_CLUSTER);
        Pid((u64::from(host.0) << Self::SEQ_BITS) | seq)
    }

    /// Reads a pid handed in by a guest; `None` if it can never be a valid pid.
    pub fn from_guest(raw: i64) -> Option<Pid> {
        (raw > 0).then_some(Pid(raw as u64))
    }

    /// The pid as a guest sees it.
    pub fn to_guest(self) -> i64 {
        self.0 as i64
    }

    /// The host that minted this pid.
    pub fn origin_host(self) -> HostId {
        HostId((self.0 >> Self::SEQ_BITS) as u32)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a process ended without exiting by itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Failure {
    /// The guest trapped; the message includes the wasm backtrace.
    Trap(String),
    /// The guest asked for more memory than its limit allows and then failed.
    MemoryLimit {
        /// The limit in bytes.
        limit: u64,
    },
    /// The process was still running at its deadline.
    Deadline(Duration),
    /// The module could not be loaded (missing, invalid, unknown import, ...).
    Load(String),
    /// The process was killed by the platform or a user.
    Killed,
    /// The host that ran the process was lost.
    HostLost,
}

impl Failure {
    /// The nimbus exit code for this failure; see the README's exit code table.
    ///
    /// Guest exit codes are restricted to 0..126 by WASI, so these never collide
    /// with a code the guest chose itself.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Trap(_) => exit_code::TRAP,
            Failure::MemoryLimit { .. } => exit_code::MEMORY_LIMIT,
            Failure::Deadline(_) => exit_code::DEADLINE,
            Failure::Load(_) => exit_code::INVALID_MODULE,
            Failure::Killed => exit_code::KILLED,
            Failure::HostLost => exit_code::INTERNAL,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap(msg) => write!(f, "trap: {msg}"),
            Failure::MemoryLimit { limit } => {
                write!(f, "memory limit of {} reached", format_size(*limit))
            }
            Failure::Deadline(d) => write!(f, "deadline of {d:?} reached"),
            Failure::Load(msg) => write!(f, "{msg}"),
            Failure::Killed => write!(f, "killed"),
            Failure::HostLost => write!(f, "host lost"),
        }
    }
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitStatus {
    /// The guest exited (returned from `_start` or called `proc_exit`) with this code.
    Exited(i32),
    /// The process failed.
    Failed(Failure),
}

impl ExitStatus {
    /// The exit code a command line reports for this status.
    pub fn code(&self) -> i32 {
        match self {
            ExitStatus::Exited(code) => *code,
            ExitStatus::Failed(failure) => failure.exit_code(),
        }
    }
}

/// The life cycle of a process as a host reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProcessState {
    /// Admitted, waiting for a slot or being instantiated.
    Starting,
    /// Executing or blocked in a host call.
    Running,
    /// Ended; see the status.
    Ended(ExitStatus),
}

impl ProcessState {
    /// The state's name as listings show it.
    pub fn name(&self) -> &'static str {
        match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Ended(_) => "ended",
        }
    }
}

/// Per-process resource limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory in bytes.
    pub memory: u64,
    /// Wall-clock time the process may live, from its start.
    pub timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            timeout: None,
        }
    }
}

/// Why an invocation did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum InvokeError {
    /// The module exports no function of that name with a handler's signature.
    #[error(
        "no handler `{0}` (a handler is an exported function with no parameters returning nothing or an i32)"
    )]
    NoSuchHandler(String),
    /// The handler returned a non-zero status.
    #[error("handler returned status {0}")]
    Status(i32),
    /// The handler exited the instance or failed (trap, memory limit, deadline).
    /// The instance has been rolled back to its state after the last invocation
    /// that did not fail, and serves on from there.
    #[error("{}", describe(.0))]
    Failed(ExitStatus),
    /// The instance's state could not be committed or rolled back. The instance
    /// must not serve again.
    #[error("the instance's state could not be kept: {0}")]
    Checkpoint(String),
}

fn describe(status: &ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("handler exited the instance with code {code}"),
        ExitStatus::Failed(failure) => failure.to_string(),
    }
}

/// Exit codes of `nimbus run` for failures, documented in the README. They start at
/// 126 because WASI limits guest exit codes to 0..126.
pub mod exit_code {
    /// A failure of nimbus itself, not of the guest.
    pub const INTERNAL: i32 = 126;
    /// The program file does not exist or cannot be read.
    pub const FILE_NOT_FOUND: i32 = 127;
    /// The file is not WebAssembly (no `\0asm` magic).
    pub const NOT_WASM: i32 = 128;
    /// The module is malformed or fails validation.
    pub const INVALID_MODULE: i32 = 129;
    /// The module does not export `_start`.
    pub const NO_START: i32 = 130;
    /// The module imports something nimbus does not provide.
    pub const UNKNOWN_IMPORT: i32 = 131;
    /// The guest trapped.
    pub const TRAP: i32 = 132;
    /// The guest hit its memory limit.
    pub const MEMORY_LIMIT: i32 = 133;
    /// The guest ran past its deadline.
    pub const DEADLINE: i32 = 134;
    /// The process was killed.
    pub const KILLED: i32 = 137;
    /// The program was captured and its checkpoint written (`--checkpoint-on-signal`).
    pub const CAPTURED: i32 = 138;
    /// The checkpoint to restore is damaged, or not of this program (`--restore`).
    pub const BAD_CHECKPOINT: i32 = 139;
}

/// Formats a byte count with a binary unit for people to read: exact when it is a
/// whole number of its unit (`64 MiB`, `1536 B` is `1.5 KiB`), else with one decimal
/// in the largest unit that keeps the figure at least 1 (`23.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        return format!("{} {}", bytes / scale, UNITS[unit]);
    }
    let tenths = (u128::from(bytes) * 10 + u128::from(scale) / 2) / u128::from(scale);
    if tenths >= 10 * 1024 && unit + 1 < UNITS.len() {
        // Rounded up to the next unit: 1023.96 MiB is 1.0 GiB.
        return format!("1.0 {}", UNITS[unit + 1]);
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_round_trips_through_guest_form() {
        let pid = Pid::new(HostId(3), 42);
        assert_eq!(Pid::from_guest(pid.to_guest()), Some(pid));
        assert_eq!(pid.origin_host(), HostId(3));
        assert!(pid.to_guest() > 0);
        let last = Pid::new(HostId::BESIDE_CLUSTER, (1 << Pid::SEQ_BITS) - 1);
        assert!(last.to_guest() > 0);
        assert_eq!(last.origin_host(), HostId::BESIDE_CLUSTER);
    }

    #[test]
    fn guest_pids_that_cannot_exist_are_rejected() {
        assert_eq!(Pid::from_guest(0), None);
        assert_eq!(Pid::from_guest(-5), None);
    }

    #[test]
    fn failure_codes_are_distinct_and_outside_guest_range() {
        let failures = [
            Failure::Trap(String::new()),
            Failure::MemoryLimit { limit: 1 },
            Failure::Deadline(Duration::from_secs(1)),
            Failure::Killed,
        ];
        let mut codes: Vec<i32> = failures.iter().map(Failure::exit_code).collect();
        assert!(codes.iter().all(|c| *c >= 126));
        codes.dedup();
        assert_eq!(codes.len(), failures.len());
    }

    #[test]
    fn sizes_format_exactly_or_with_one_decimal() {
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        // What `nimbus hosts` printed as `24683652 KiB`.
        assert_eq!(format_size(24_683_652 << 10), "23.5 GiB");
        assert_eq!(format_size((1 << 30) - 1), "1.0 GiB");
        assert_eq!(format_size(5 << 40), "5 TiB");
        assert_eq!(format_size(u64::MAX), "16777216.0 TiB");
        assert_eq!(format_size(3 << 30), "3 GiB");
    }
}
