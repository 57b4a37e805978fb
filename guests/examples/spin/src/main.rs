//! Loops forever without doing any I/O: used to test deadlines and interruption.

use std::hint::black_box;

fn main() {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}
