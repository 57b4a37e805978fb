//! A service process: a WASI reactor whose handlers keep state in memory between
//! invocations. No SDK needed: a handler is an exported function with no parameters;
//! the request body is its stdin, its stdout is the response, and a non-zero return
//! value is an error.
//!
//! - `add`: reads an integer from stdin, adds it to the total, prints the new total;
//! - `total`: prints the total and how many numbers were added.

use std::io::Read;
use std::sync::Mutex;

/// Every number added so far; lives on the heap, so restoring it needs the whole
/// memory and the allocator's state, not just a static.
static HISTORY: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// Adds the number in the request body to the total.
#[unsafe(no_mangle)]
pub extern "C" fn add() -> i32 {
    let mut body = String::new();
    if std::io::stdin().read_to_string(&mut body).is_err() {
        return 2;
    }
    let Ok(number) = body.trim().parse::<i64>() else {
        eprintln!("add: not an integer: {:?}", body.trim());
        return 1;
    };
    let mut history = HISTORY.lock().unwrap();
    history.push(number);
    println!("{}", history.iter().sum::<i64>());
    0
}

/// Prints `TOTAL COUNT`.
#[unsafe(no_mangle)]
pub extern "C" fn total() -> i32 {
    let history = HISTORY.lock().unwrap();
    println!("{} {}", history.iter().sum::<i64>(), history.len());
    0
}
