//! The smallest nimbus program: prints a greeting.

fn main() {
    println!("Hello from nimbus!");
}
