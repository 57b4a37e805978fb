//! Parks in `recv` until one message arrives, then exits 0. A benchmark keeps many of
//! these alive at once, so it does nothing else.

fn main() {
    if let Err(err) = nimbus_sdk::recv() {
        eprintln!("idle: recv failed: {err}");
        std::process::exit(1);
    }
}
