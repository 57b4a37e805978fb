//! Two-tier state through the Rust SDK: every operation on both tiers, a value moved
//! between hosts by push and pull, a global value longer than one host-to-host frame,
//! and a global counter incremented under its lock by children spread over the hosts.
//! Prints `state-check ok`, or panics naming the failed check.

use nimbus_sdk::Error;
use nimbus_sdk::state::{self, Tier};

const CHILDREN: usize = 3;
const INCREMENTS: u64 = 20;

fn counter() -> u64 {
    state::get(Tier::Global, b"counter")
        .unwrap()
        .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()))
}

fn child() {
    assert!(state::pull(b"greeting").unwrap());
    assert_eq!(
        state::get(Tier::Local, b"greeting").unwrap().unwrap(),
        b"hello"
    );
    for _ in 0..INCREMENTS {
        state::lock(b"counter", 10_000, 30_000).unwrap();
        let next = counter() + 1;
        state::set(Tier::Global, b"counter", &next.to_le_bytes()).unwrap();
        state::unlock(b"counter").unwrap();
    }
}

fn tier_operations(tier: Tier) {
    state::delete(tier, b"k").unwrap();
    assert_eq!(state::get(tier, b"k").unwrap(), None);
    let long = vec![7u8; 1000]; // longer than the SDK's first buffer
    state::set(tier, b"k", &long).unwrap();
    assert_eq!(state::get(tier, b"k").unwrap().unwrap(), long);
    state::set(tier, b"k", b"value\0with nul").unwrap();
    assert_eq!(state::get_range(tier, b"k", 6, 4).unwrap(), b"with");
    assert_eq!(state::get_range(tier, b"k", 12, 10).unwrap(), b"ul");
    state::set_range(tier, b"k", 16, b"XY").unwrap();
    assert_eq!(
        state::get(tier, b"k").unwrap().unwrap(),
        b"value\0with nul\0\0XY"
    );
    assert_eq!(state::append(tier, b"k", b"!!").unwrap(), 20);
    assert!(state::delete(tier, b"k").unwrap());
    assert!(!state::delete(tier, b"k").unwrap());
    assert_eq!(state::set(tier, b"", b"x"), Err(Error::Invalid));
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("child") {
        return child();
    }
    tier_operations(Tier::Local);
    tier_operations(Tier::Global);

    let big: Vec<u8> = (0..24 << 20).map(|i| (i % 251) as u8).collect();
    state::set(Tier::Global, b"big", &big).unwrap();
    assert!(state::get(Tier::Global, b"big").unwrap().unwrap() == big);
    assert!(state::delete(Tier::Global, b"big").unwrap());

    state::delete(Tier::Global, b"greeting").unwrap();
    assert!(!state::push(b"greeting").unwrap());
    state::set(Tier::Local, b"greeting", b"hello").unwrap();
    assert!(state::push(b"greeting").unwrap());

    state::lock(b"counter", 10_000, 1_000).unwrap();
    assert_eq!(state::lock(b"counter", 10_000, 50), Err(Error::TimedOut));
    state::unlock(b"counter").unwrap();
    assert_eq!(state::unlock(b"counter"), Err(Error::Invalid));

    state::set(Tier::Global, b"counter", &0u64.to_le_bytes()).unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| nimbus_sdk::spawn_self(&["child"]).unwrap())
        .collect();
    for child in children {
        assert_eq!(nimbus_sdk::wait(child).unwrap(), 0);
    }
    assert_eq!(counter(), CHILDREN as u64 * INCREMENTS);
    println!("state-check ok");
}
