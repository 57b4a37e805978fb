//! A service process written with the SDK's typed handler layer: `greet` takes a
//! name (UTF-8 text) and answers with a greeting that counts visitors, a number kept
//! in memory between invocations; `visitors` takes nothing and answers the count.

use std::sync::atomic::{AtomicU64, Ordering};

use nimbus_sdk::service::handle;

static VISITORS: AtomicU64 = AtomicU64::new(0);

/// Greets the name in the request body.
#[unsafe(no_mangle)]
pub extern "C" fn greet() -> i32 {
    handle(|name: String| {
        let name = name.trim();
        if name.is_empty() {
            return Err("say who you are");
        }
        let visitor = VISITORS.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(format!("hello, {name}: visitor #{visitor}\n"))
    })
}

/// Answers how many visitors were greeted.
#[unsafe(no_mangle)]
pub extern "C" fn visitors() -> i32 {
    handle(|(): ()| Ok::<_, String>(VISITORS.load(Ordering::Relaxed)))
}
