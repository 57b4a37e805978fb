//! Test fixture for the nimbus process ABI through `nimbus-sdk`.
//!
//! The parent checks its pid, spawns 3 children of its own module (`child <parent>`),
//! receives one `hello from <child pid>` message from each, waits for all of them (each
//! must exit 7), then checks the error cases of `send`, `wait` and `spawn`. Prints
//! `spawn-check ok` and exits 0, or prints what failed to stderr and exits 1.

use std::collections::HashSet;
use std::process::exit;

use nimbus_sdk::{Error, Pid, pid, recv, send, spawn, spawn_self, wait};

const CHILDREN: usize = 3;
const CHILD_EXIT: i32 = 7;

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("spawn-check: {msg}");
    exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(args.get(2).map(String::as_str));
    } else {
        parent();
    }
}

fn child(parent: Option<&str>) -> ! {
    let parent: Pid = parent
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| fail("child: usage: child <parent-pid>"));
    let me = pid();
    if me.0 <= 0 || me == parent {
        fail(format_args!("child: bad pid {me} (parent {parent})"));
    }
    if let Err(err) = send(parent, format!("hello from {me}").as_bytes()) {
        fail(format_args!("child {me}: send to {parent} failed: {err}"));
    }
    exit(CHILD_EXIT);
}

fn parent() {
    let me = pid();
    if me.0 <= 0 {
        fail(format_args!("pid() = {me}, expected > 0"));
    }

    let me_text = me.to_string();
    let mut children = HashSet::new();
    for i in 0..CHILDREN {
        match spawn_self(&["child", &me_text]) {
            Ok(child) if child.0 > 0 && child != me && children.insert(child) => {}
            Ok(child) => fail(format_args!("spawn {i} returned bad pid {child}")),
            Err(err) => fail(format_args!("spawn {i} failed: {err}")),
        }
    }

    let mut heard = HashSet::new();
    for _ in 0..CHILDREN {
        let msg = recv().unwrap_or_else(|err| fail(format_args!("recv failed: {err}")));
        if !children.contains(&msg.from) {
            fail(format_args!("message from {}, not a child", msg.from));
        }
        if !heard.insert(msg.from) {
            fail(format_args!("second message from {}", msg.from));
        }
        let expected = format!("hello from {}", msg.from);
        if msg.data != expected.as_bytes() {
            fail(format_args!(
                "message from {} is {:?}, expected {expected:?}",
                msg.from,
                String::from_utf8_lossy(&msg.data)
            ));
        }
    }

    for &child in &children {
        match wait(child) {
            Ok(CHILD_EXIT) => {}
            other => fail(format_args!(
                "wait({child}) = {other:?}, expected Ok({CHILD_EXIT})"
            )),
        }
    }

    expect(
        "send(999999999)",
        send(Pid(999_999_999), b"anyone?"),
        Error::NoSuchProcess,
    );
    expect("wait(12345678)", wait(Pid(12_345_678)), Error::NotChild);
    expect(
        "spawn(\"missing.wasm\")",
        spawn("missing.wasm", &[]),
        Error::Module,
    );

    println!("spawn-check ok");
}

fn expect<T: std::fmt::Debug>(what: &str, got: Result<T, Error>, want: Error) {
    match got {
        Err(err) if err == want => {}
        other => fail(format_args!("{what} = {other:?}, expected Err({want:?})")),
    }
}
