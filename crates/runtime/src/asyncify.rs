//! The capture transform: binaryen's asyncify, run by `wasm-opt` as a child process
//! before a capturable program is compiled.
//!
//! Asyncify rewrites every function that can reach one of the [`BLOCKING_IMPORTS`]
//! (and only those) so that its stack can be unwound into a buffer in linear
//! memory and rewound from it later, and exports `asyncify_start_unwind`,
//! `asyncify_stop_unwind`, `asyncify_start_rewind` and `asyncify_stop_rewind`,
//! which [`crate::capture`] calls. Functions that cannot reach those imports run
//! exactly as before.
//!
//! Blocking: runs a child process. Call it where compiling is called, off the
//! async threads.

use std::process::{Command, Stdio};

use wasmparser::{Parser, Payload};

/// The host calls a capture can stop a command in, `(module, name)`: the only
/// imports the transform makes unwindable, so only the functions that reach them
/// pay for it.
pub(crate) const BLOCKING_IMPORTS: &[(&str, &str)] = &[(WASI, "fd_read"), (WASI, "poll_oneoff")];

/// The import module of WASI preview 1.
pub(crate) const WASI: &str = "wasi_snapshot_preview1";

/// The version of this transform (its arguments, the binaryen release it is
/// tested with): the artifact cache of capturable programs keys by it.
pub(crate) const VERSION: u32 = 1;

/// The program that performs the transform.
const WASM_OPT: &str = "wasm-opt";

/// What every export the transform adds starts with.
const EXPORT_PREFIX: &str = "asyncify_";

/// Why a module cannot be made capturable. It still runs, uncapturable.
#[derive(Debug, thiserror::Error)]
pub enum AsyncifyError {
    /// binaryen is not installed.
    #[error(
        "`wasm-opt` (binaryen) is not installed, so no program can be made capturable: \
         install the Debian package `binaryen` (scripts/setup.sh does)"
    )]
    Missing,
    /// The module already has asyncify's exports (it was transformed before):
    /// transforming it again would break it.
    #[error("the module already exports `{0}`: it was transformed by asyncify before")]
    AlreadyTransformed(String),
    /// `wasm-opt` refused the module (wasm exceptions, say).
    #[error("wasm-opt cannot transform it: {0}")]
    Refused(String),
    /// The transform could not be run.
    #[error("running wasm-opt: {0}")]
    Io(#[from] std::io::Error),
}

/// `wasm`, transformed so that it can be unwound and rewound at its blocking host
/// calls.
pub(crate) fn asyncify(wasm: &[u8]) -> Result<Vec<u8>, AsyncifyError> {
    if let Some(name) = asyncify_export(wasm) {
        return Err(AsyncifyError::AlreadyTransformed(name));
    }
    let dir = tempfile::Builder::new()
        .prefix("nimbus-asyncify")
        .tempdir()?;
    let (input, output) = (dir.path().join("in.wasm"), dir.path().join("out.wasm"));
    std::fs::write(&input, wasm)?;
    let imports: Vec<String> = BLOCKING_IMPORTS
        .iter()
        .map(|(module, name)| format!("{module}.{name}"))
        .collect();
    let ran = Command::new(WASM_OPT)
        .arg(&input)
        .arg("--asyncify")
        .arg(format!("--pass-arg=asyncify-imports@{}", imports.join(",")))
        // Optimise what asyncify emitted; keep function names for trap backtraces.
        .args(["-O2", "--debuginfo", "-o"])
        .arg(&output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AsyncifyError::Missing,
            _ => AsyncifyError::Io(e),
        })?;
    if !ran.status.success() {
        let stderr = String::from_utf8_lossy(&ran.stderr);
        let why = stderr
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("no message");
        return Err(AsyncifyError::Refused(format!("{why} ({})", ran.status)));
    }
    Ok(std::fs::read(&output)?)
}

/// The name of an export of `wasm` that asyncify would add, if it has one. A
/// malformed module has none here: compiling it reports what is wrong.
fn asyncify_export(wasm: &[u8]) -> Option<String> {
    for payload in Parser::new(0).parse_all(wasm) {
        if let Ok(Payload::ExportSection(exports)) = payload {
            return exports
                .into_iter()
                .filter_map(Result::ok)
                .find(|export| export.name.starts_with(EXPORT_PREFIX))
                .map(|export| export.name.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLEEPER: &str = r#"(module
        (import "wasi_snapshot_preview1" "poll_oneoff"
            (func $poll (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func $inner (drop (call $poll (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))))
        (func $pure (result i32) (i32.const 7))
        (func (export "_start") (call $inner) (drop (call $pure))))"#;

    fn exports(wasm: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::ExportSection(exports) = payload.unwrap() {
                names.extend(exports.into_iter().map(|e| e.unwrap().name.to_owned()));
            }
        }
        names
    }

    #[test]
    fn a_transformed_module_exports_the_unwind_and_rewind_entry_points() {
        let out = asyncify(&wat::parse_str(SLEEPER).unwrap()).unwrap();
        let names = exports(&out);
        for name in [
            "asyncify_start_unwind",
            "asyncify_stop_unwind",
            "asyncify_start_rewind",
            "asyncify_stop_rewind",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
        }
        wasmparser::validate(&out).unwrap();
    }

    #[test]
    fn a_module_transformed_before_is_refused() {
        let out = asyncify(&wat::parse_str(SLEEPER).unwrap()).unwrap();
        match asyncify(&out) {
            Err(AsyncifyError::AlreadyTransformed(name)) => assert!(name.starts_with("asyncify_")),
            other => panic!("transformed twice: {other:?}"),
        }
    }

    #[test]
    fn a_module_wasm_opt_refuses_gives_its_reason() {
        match asyncify(b"\0asm\x01\0\0\0\x01garbage") {
            Err(AsyncifyError::Refused(why)) => assert!(!why.is_empty()),
            other => panic!("accepted: {other:?}"),
        }
    }
}
