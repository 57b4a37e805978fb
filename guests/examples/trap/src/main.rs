//! Traps on purpose in a function named `crash_here`, so a backtrace can be checked for
//! that name (the release profile keeps the wasm "name" section).

/// Executes `unreachable`. Never inlined and not mangled, so it keeps its own frame and
/// shows up as `crash_here` in a trap's backtrace.
#[unsafe(no_mangle)]
#[inline(never)]
pub fn crash_here() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn main() {
    crash_here();
}
