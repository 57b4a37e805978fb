//! Every way a run can fail: one clear line on stderr and a distinct exit code.

mod common;

use common::{guest, nimbus, outcome, run};

struct Case {
    name: &'static str,
    /// The program file: a built guest, or bytes written to a temporary file.
    program: Program,
    flags: &'static [&'static str],
    code: i32,
    /// Text nimbus's line on stderr must contain.
    message: &'static str,
}

enum Program {
    Guest(&'static str),
    Bytes(Vec<u8>),
    Missing,
}

fn wat(text: &str) -> Program {
    Program::Bytes(wat::parse_str(text).unwrap())
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "file missing",
            program: Program::Missing,
            flags: &[],
            code: 127,
            message: "cannot read",
        },
        Case {
            name: "not WebAssembly",
            program: Program::Bytes(b"#!/bin/sh\necho hi\n".to_vec()),
            flags: &[],
            code: 128,
            message: "not a WebAssembly module",
        },
        Case {
            name: "malformed",
            program: Program::Bytes(b"\0asm\x01\0\0\0\x01\xff\xff\xff".to_vec()),
            flags: &[],
            code: 129,
            message: "invalid WebAssembly module",
        },
        Case {
            name: "fails validation",
            program: wat("(module (func (result i32)))"),
            flags: &[],
            code: 129,
            message: "invalid WebAssembly module",
        },
        Case {
            name: "no _start",
            program: wat("(module (memory (export \"memory\") 1))"),
            flags: &[],
            code: 130,
            message: "no `_start`",
        },
        Case {
            name: "unknown import",
            program: wat(
                r#"(module (import "env" "mystery_call" (func)) (func (export "_start")))"#,
            ),
            flags: &[],
            code: 131,
            message: "env::mystery_call",
        },
        Case {
            name: "trap",
            program: Program::Guest("trap"),
            flags: &[],
            code: 132,
            message: "trap",
        },
        Case {
            name: "stack overflow",
            program: wat(r#"(module (memory (export "memory") 1)
                     (func $recurse (call $recurse))
                     (func (export "_start") (call $recurse)))"#),
            flags: &[],
            code: 132,
            message: "call stack exhausted",
        },
        Case {
            name: "memory limit",
            program: Program::Guest("hog"),
            flags: &["--mem", "32MiB"],
            code: 133,
            message: "memory limit of 32 MiB reached",
        },
        Case {
            name: "deadline while computing",
            program: Program::Guest("spin"),
            flags: &["--timeout", "300ms"],
            code: 134,
            message: "deadline",
        },
        Case {
            name: "deadline while blocked in recv",
            program: Program::Guest("idle"),
            flags: &["--timeout", "300ms"],
            code: 134,
            message: "deadline",
        },
    ]
}

#[test]
fn each_failure_has_its_message_and_exit_code() {
    let scratch = tempfile::tempdir().unwrap();
    for (i, case) in cases().into_iter().enumerate() {
        let path = match case.program {
            Program::Guest(name) => guest(name),
            Program::Bytes(bytes) => {
                let path = scratch.path().join(format!("case{i}.wasm"));
                std::fs::write(&path, bytes).unwrap();
                path
            }
            Program::Missing => scratch.path().join("no-such-program.wasm"),
        };
        let mut args = vec!["run"];
        args.extend(case.flags);
        args.push(path.to_str().unwrap());
        let (_, stderr, code) = outcome(&run(nimbus(&args)));
        // The guest may write to stderr before it fails; nimbus adds one line.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("nimbus: "))
            .collect();
        assert_eq!(code, Some(case.code), "{}: {stderr}", case.name);
        assert_eq!(ours.len(), 1, "{}: {stderr}", case.name);
        assert!(
            ours[0].contains(case.message),
            "{}: `{}` not in {:?}",
            case.name,
            case.message,
            ours[0]
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", case.name);
    }
}

#[test]
fn trap_shows_the_wasm_backtrace_with_function_names() {
    let path = guest("trap");
    let (_, stderr, code) = outcome(&run(nimbus(&["run", path.to_str().unwrap()])));
    assert_eq!(code, Some(132));
    assert!(stderr.contains("crash_here"), "{stderr}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &["run", "--mem", "lots", hello],
        &["run", "--timeout", "soon", hello],
        &["run", "--env", "NOEQUALS", hello],
        &["run", "--dir", "/no/such/dir::/data", hello],
        &["run", "--mem", "8GiB", hello],
        &["run", "--hosts", "0", hello],
        &["worker", "--cpus", "0"],
        &["up", "--workers", "1", "--planner", "127.0.0.1:1"],
    ];
    for args in cases {
        let (_, stderr, code) = outcome(&run(nimbus(args)));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
