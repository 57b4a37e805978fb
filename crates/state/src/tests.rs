//! One suite run against every global tier: the embedded one, a real `redis-server`
//! started by each test, and an embedded one served over TCP; then what depends on
//! none.

use std::sync::Arc;
use std::time::Duration;

use crate::testing::RedisServer;
use crate::{
    AppName, AppState, Embedded, GlobalTier, HostState, Key, LocalTier, LockToken, MAX_KEY_LEN,
    MAX_VALUE_LEN, StateError,
};

/// Generous bound on waits that end on an event.
const BOUND: Duration = Duration::from_secs(10);
/// The capacity of an embedded tier where the test does not fill it.
const ANY: u64 = crate::DEFAULT_GLOBAL_CAPACITY;
/// A lease nobody outlives in a test.
const LONG: Duration = Duration::from_secs(60);

/// A global tier and what keeps it alive.
struct Fixture {
    tier: Arc<dyn GlobalTier>,
    _server: Option<RedisServer>,
}

fn embedded() -> Fixture {
    Fixture {
        tier: Arc::new(Embedded::new()),
        _server: None,
    }
}

async fn redis() -> Fixture {
    let server = RedisServer::start()
        .unwrap_or_else(|e| panic!("the Redis tests need a redis-server (CI installs it): {e}"));
    let tier = crate::open(Some(&server.url()), ANY, None)
        .await
        .expect("connects to the test redis-server");
    Fixture {
        tier,
        _server: Some(server),
    }
}

/// An embedded tier served over loopback TCP, reached as `nimbus://ADDR`.
async fn served() -> Fixture {
    serving(Embedded::new()).await
}

/// `tier` served over loopback TCP, reached as `nimbus://ADDR`.
async fn serving(tier: Embedded) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = nimbus_trust::Tls::ephemeral().unwrap();
    tokio::spawn(crate::serve(listener, tls.clone(), Arc::new(tier)));
    let tier = crate::open(Some(&format!("nimbus://{addr}")), ANY, Some(tls))
        .await
        .expect("connects to the served tier");
    assert_eq!(tier.location(), format!("nimbus://{addr}"));
    Fixture {
        tier,
        _server: None,
    }
}

fn app(name: &str) -> AppState {
    // Tests reach the tier through an app's handle, as the platform does.
    AppState::new(
        AppName::new(name).unwrap(),
        Arc::new(Embedded::new()),
        1 << 20,
    )
}

fn on(tier: &Arc<dyn GlobalTier>, name: &str) -> AppState {
    AppState::new(AppName::new(name).unwrap(), tier.clone(), 1 << 20)
}

/// Each case, as a test against each backend.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $case() {
                    let fixture = super::embedded();
                    super::cases::$case(fixture.tier.clone()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let fixture = super::redis().await;
                    super::cases::$case(fixture.tier.clone()).await;
                }
            )*
        }
        mod served {
            $(
                #[tokio::test]
                async fn $case() {
                    let fixture = super::served().await;
                    super::cases::$case(fixture.tier.clone()).await;
                }
            )*
        }
    };
}

suite!(
    get_set_roundtrip,
    missing_key,
    ranges,
    set_range_extends_with_zeros,
    append,
    delete,
    binary_values,
    limits,
    tenants_are_separate,
    lock_excludes,
    lock_serialises_read_modify_write,
    lock_times_out,
    unlock_by_non_holder_fails,
    lease_expires,
    push_pull_between_hosts,
    push_pull_ranges,
    values_longer_than_a_frame,
);

mod cases {
    use super::*;

    pub async fn get_set_roundtrip(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        a.set(b"k", b"hello".to_vec()).await.unwrap();
        assert_eq!(a.get(b"k").await.unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(a.len(b"k").await.unwrap(), 5);
        a.set(b"k", b"bye".to_vec()).await.unwrap();
        assert_eq!(a.get(b"k").await.unwrap().as_deref(), Some(&b"bye"[..]));
        a.set(b"empty", Vec::new()).await.unwrap();
        assert_eq!(a.get(b"empty").await.unwrap(), Some(vec![]));
    }

    pub async fn missing_key(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        assert_eq!(a.get(b"nope").await.unwrap(), None);
        assert_eq!(a.len(b"nope").await.unwrap(), 0);
        assert_eq!(a.get_range(b"nope", 0, 10).await.unwrap(), b"");
        assert!(!a.delete(b"nope").await.unwrap());
    }

    pub async fn ranges(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        a.set(b"k", b"0123456789".to_vec()).await.unwrap();
        assert_eq!(a.get_range(b"k", 0, 3).await.unwrap(), b"012");
        assert_eq!(a.get_range(b"k", 4, 2).await.unwrap(), b"45");
        assert_eq!(a.get_range(b"k", 0, 0).await.unwrap(), b"");
        // Past the end: what exists, then nothing.
        assert_eq!(a.get_range(b"k", 8, 100).await.unwrap(), b"89");
        assert_eq!(a.get_range(b"k", 10, 1).await.unwrap(), b"");
        assert_eq!(a.get_range(b"k", 1000, 1).await.unwrap(), b"");
        assert_eq!(a.get_range(b"k", u64::MAX, u64::MAX).await.unwrap(), b"");
        assert_eq!(a.get_range(b"k", 0, u64::MAX).await.unwrap(), b"0123456789");
        assert_eq!(a.set_range(b"k", 2, b"ab").await.unwrap(), 10);
        assert_eq!(a.get(b"k").await.unwrap().unwrap(), b"01ab456789");
        assert_eq!(a.set_range(b"k", 9, b"XYZ").await.unwrap(), 12);
        assert_eq!(a.get(b"k").await.unwrap().unwrap(), b"01ab45678XYZ");
    }

    pub async fn set_range_extends_with_zeros(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        assert_eq!(a.set_range(b"new", 3, b"x").await.unwrap(), 4);
        assert_eq!(a.get(b"new").await.unwrap().unwrap(), b"\0\0\0x");
        // Writing nothing neither creates nor changes.
        assert_eq!(a.set_range(b"none", 5, b"").await.unwrap(), 0);
        assert_eq!(a.get(b"none").await.unwrap(), None);
        assert_eq!(a.set_range(b"new", 100, b"").await.unwrap(), 4);
    }

    pub async fn append(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        assert_eq!(a.append(b"log", b"one").await.unwrap(), 3);
        assert_eq!(a.append(b"log", b",two").await.unwrap(), 7);
        assert_eq!(a.append(b"log", b"").await.unwrap(), 7);
        assert_eq!(a.get(b"log").await.unwrap().unwrap(), b"one,two");
    }

    pub async fn delete(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        a.set(b"k", b"v".to_vec()).await.unwrap();
        assert!(a.delete(b"k").await.unwrap());
        assert_eq!(a.get(b"k").await.unwrap(), None);
        assert!(!a.delete(b"k").await.unwrap());
    }

    pub async fn binary_values(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        let value: Vec<u8> = (0..=255u8).chain([0, 0xff, b'\r', b'\n', 0]).collect();
        // Key names are binary too, separator included.
        let name = b"\0:\xff\r\n key";
        a.set(name, value.clone()).await.unwrap();
        assert_eq!(a.get(name).await.unwrap().unwrap(), value);
        assert_eq!(a.get_range(name, 255, 3).await.unwrap(), b"\xff\0\xff");
        a.append(name, b"\0\xff").await.unwrap();
        assert_eq!(a.len(name).await.unwrap(), value.len() as u64 + 2);
        assert_eq!(a.get(b"\0:\xff\r\n").await.unwrap(), None);
    }

    /// 40 MiB and more: the served tier answers in parts and uploads such values.
    pub async fn values_longer_than_a_frame(tier: Arc<dyn GlobalTier>) {
        const MIB: usize = 1 << 20;
        let a = on(&tier, "app");
        let big: Vec<u8> = (0..40 * MIB).map(|i| (i % 251) as u8).collect();
        a.set(b"big", big.clone()).await.unwrap();
        assert_eq!(a.len(b"big").await.unwrap(), (40 * MIB) as u64);
        assert!(a.get(b"big").await.unwrap().unwrap() == big);
        let range = a.get_range(b"big", 10 * MIB as u64, 20 * MIB as u64);
        assert!(range.await.unwrap() == big[10 * MIB..30 * MIB]);
        let sevens = vec![7u8; 20 * MIB];
        assert_eq!(a.append(b"big", &sevens).await.unwrap(), (60 * MIB) as u64);
        assert_eq!(
            a.set_range(b"big", 1, &sevens).await.unwrap(),
            (60 * MIB) as u64
        );
        let whole = a.get(b"big").await.unwrap().unwrap();
        assert_eq!(whole.len(), 60 * MIB);
        assert_eq!(whole[0], big[0]);
        assert!(whole[1..=20 * MIB].iter().all(|&b| b == 7));
        assert!(whole[20 * MIB + 1..40 * MIB] == big[20 * MIB + 1..]);
        assert!(whole[40 * MIB..].iter().all(|&b| b == 7));
        assert!(a.delete(b"big").await.unwrap());
    }

    pub async fn limits(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        let longest = vec![b'k'; MAX_KEY_LEN];
        a.set(&longest, b"v".to_vec()).await.unwrap();
        assert_eq!(a.get(&longest).await.unwrap().unwrap(), b"v");
        let too_long = vec![b'k'; MAX_KEY_LEN + 1];
        assert!(matches!(
            a.set(&too_long, b"v".to_vec()).await,
            Err(StateError::KeyTooLong { len }) if len == MAX_KEY_LEN + 1
        ));
        assert!(matches!(a.get(b"").await, Err(StateError::EmptyKey)));
        // Zeroed pages are not touched: this costs no memory.
        let huge = vec![0u8; MAX_VALUE_LEN as usize + 1];
        let err = a.set(b"huge", huge).await.unwrap_err();
        assert!(
            matches!(err, StateError::ValueTooLarge { len: Some(n) } if n == MAX_VALUE_LEN + 1)
        );
        assert!(err.to_string().contains("512 MiB"), "{err}");
        assert!(matches!(
            a.set_range(b"huge", MAX_VALUE_LEN, b"x").await,
            Err(StateError::ValueTooLarge { .. })
        ));
        assert_eq!(a.get(b"huge").await.unwrap(), None);
        // The last byte allowed, through a range write (a zero-filled value of 512 MiB).
        assert_eq!(
            a.set_range(b"huge", MAX_VALUE_LEN - 1, b"x").await.unwrap(),
            MAX_VALUE_LEN
        );
        assert!(matches!(
            a.append(b"huge", b"y").await,
            Err(StateError::ValueTooLarge { .. })
        ));
        assert_eq!(
            a.get_range(b"huge", MAX_VALUE_LEN - 2, 5).await.unwrap(),
            b"\0x"
        );
        assert!(a.delete(b"huge").await.unwrap());
    }

    pub async fn tenants_are_separate(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "tenant-a");
        let b = on(&tier, "tenant-b");
        // An app whose name is another's with a prefix of the key folded in.
        let a_colon = on(&tier, "tenant");
        a.set(b"k", b"from a".to_vec()).await.unwrap();
        assert_eq!(b.get(b"k").await.unwrap(), None);
        assert_eq!(a_colon.get(b"a:k").await.unwrap(), None);
        assert_eq!(a_colon.get(b"-a:k").await.unwrap(), None);
        b.set(b"k", b"from b".to_vec()).await.unwrap();
        assert_eq!(a.get(b"k").await.unwrap().unwrap(), b"from a");
        assert!(b.delete(b"k").await.unwrap());
        assert_eq!(a.get(b"k").await.unwrap().unwrap(), b"from a");
        // Locks too: a's lock does not hold b's key.
        let token = a.lock(b"k", LONG, BOUND).await.unwrap();
        let other = b.lock(b"k", LONG, Duration::ZERO).await.unwrap();
        assert!(matches!(
            b.unlock(b"k", token).await,
            Err(StateError::NotHolder { .. })
        ));
        a.unlock(b"k", token).await.unwrap();
        b.unlock(b"k", other).await.unwrap();
        // And a lock is not a value: locking creates no key.
        assert_eq!(a.get(b"k").await.unwrap().unwrap(), b"from a");
        assert_eq!(b.get(b"k").await.unwrap(), None);
    }

    pub async fn lock_excludes(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        let first = a.lock(b"l", LONG, BOUND).await.unwrap();
        let contender = a.clone();
        let mut second = tokio::spawn(async move { contender.lock(b"l", LONG, BOUND).await });
        // While the first holds it the second waits (this window can only hide a bug,
        // never fail a correct lock).
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut second)
                .await
                .is_err(),
            "the second locker got a held lock"
        );
        a.unlock(b"l", first).await.unwrap();
        let second = tokio::time::timeout(BOUND, second)
            .await
            .expect("the second locker gets the lock after unlock")
            .unwrap()
            .unwrap();
        assert_ne!(first, second);
        a.unlock(b"l", second).await.unwrap();
        // Free again: taken at once.
        let third = a.lock(b"l", LONG, Duration::ZERO).await.unwrap();
        a.unlock(b"l", third).await.unwrap();
    }

    pub async fn lock_serialises_read_modify_write(tier: Arc<dyn GlobalTier>) {
        const TASKS: u64 = 4;
        const ROUNDS: u64 = 25;
        let a = on(&tier, "app");
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        let token = a.lock(b"counter", LONG, BOUND).await.unwrap();
                        let n = match a.get(b"counter").await.unwrap() {
                            Some(v) => u64::from_le_bytes(v.try_into().unwrap()),
                            None => 0,
                        };
                        tokio::task::yield_now().await;
                        a.set(b"counter", (n + 1).to_le_bytes().to_vec())
                            .await
                            .unwrap();
                        a.unlock(b"counter", token).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let n = a.get(b"counter").await.unwrap().unwrap();
        assert_eq!(u64::from_le_bytes(n.try_into().unwrap()), TASKS * ROUNDS);
    }

    pub async fn lock_times_out(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        let held = a.lock(b"l", LONG, BOUND).await.unwrap();
        let err = a
            .lock(b"l", LONG, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, StateError::LockTimeout { .. }), "{err}");
        assert!(err.to_string().contains("app:l"), "{err}");
        assert!(matches!(
            a.lock(b"l", LONG, Duration::ZERO).await,
            Err(StateError::LockTimeout { .. })
        ));
        a.unlock(b"l", held).await.unwrap();
        assert!(matches!(
            a.lock(b"l", Duration::ZERO, BOUND).await,
            Err(StateError::InvalidLease { .. })
        ));
    }

    pub async fn unlock_by_non_holder_fails(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        let held = a.lock(b"l", LONG, BOUND).await.unwrap();
        let other = a.lock(b"m", LONG, BOUND).await.unwrap();
        // Someone else's token, and a token on a key never locked.
        let err = a.unlock(b"l", other).await.unwrap_err();
        assert!(matches!(err, StateError::NotHolder { .. }), "{err}");
        assert!(matches!(
            a.unlock(b"never", held).await,
            Err(StateError::NotHolder { .. })
        ));
        assert!(matches!(
            a.unlock(b"l", LockToken::from(u128::from(held) ^ 1)).await,
            Err(StateError::NotHolder { .. })
        ));
        // The holder's lock survived both.
        assert!(matches!(
            a.lock(b"l", LONG, Duration::ZERO).await,
            Err(StateError::LockTimeout { .. })
        ));
        // The token survives the trip through its bits (as through a guest).
        a.unlock(b"l", LockToken::from(u128::from(held)))
            .await
            .unwrap();
        // Twice is once too many.
        assert!(matches!(
            a.unlock(b"l", held).await,
            Err(StateError::NotHolder { .. })
        ));
        a.unlock(b"m", other).await.unwrap();
    }

    pub async fn lease_expires(tier: Arc<dyn GlobalTier>) {
        let a = on(&tier, "app");
        // A holder that never unlocks: the next one gets the lock when the lease ends.
        let stale = a
            .lock(b"l", Duration::from_millis(100), BOUND)
            .await
            .unwrap();
        let next = a.lock(b"l", LONG, BOUND).await.unwrap();
        assert_ne!(stale, next);
        // The stale holder cannot release its successor's lock.
        assert!(matches!(
            a.unlock(b"l", stale).await,
            Err(StateError::NotHolder { .. })
        ));
        a.unlock(b"l", next).await.unwrap();
    }

    pub async fn push_pull_between_hosts(tier: Arc<dyn GlobalTier>) {
        let app = AppName::new("app").unwrap();
        let host1 = HostState::new(tier.clone(), 1 << 20);
        let host2 = HostState::new(tier.clone(), 1 << 20);
        let (one, two) = (host1.app(&app), host2.app(&app));
        one.local().set(b"k", b"local to 1".to_vec()).unwrap();
        // Not coherent: host 2 and the global tier see nothing yet.
        assert_eq!(two.local().get(b"k").unwrap(), None);
        assert_eq!(one.get(b"k").await.unwrap(), None);
        assert!(!two.local().pull(b"k").await.unwrap());
        assert!(one.local().push(b"k").await.unwrap());
        assert_eq!(one.get(b"k").await.unwrap().unwrap(), b"local to 1");
        assert_eq!(two.local().get(b"k").unwrap(), None);
        assert!(two.local().pull(b"k").await.unwrap());
        assert_eq!(two.local().get(b"k").unwrap().unwrap(), b"local to 1");
        // And back.
        two.local().append(b"k", b", then 2").unwrap();
        assert!(two.local().push(b"k").await.unwrap());
        assert_eq!(one.local().get(b"k").unwrap().unwrap(), b"local to 1");
        assert!(one.local().pull(b"k").await.unwrap());
        assert_eq!(
            one.local().get(b"k").unwrap().unwrap(),
            b"local to 1, then 2"
        );
        // Nothing to push changes nothing.
        assert!(!one.local().push(b"missing").await.unwrap());
        assert_eq!(one.get(b"missing").await.unwrap(), None);
        // Another app on the same hosts sees none of it.
        let other = host2.app(&AppName::new("other").unwrap());
        assert!(!other.local().pull(b"k").await.unwrap());
        assert_eq!(other.local().get(b"k").unwrap(), None);
    }

    pub async fn push_pull_ranges(tier: Arc<dyn GlobalTier>) {
        let app = AppName::new("app").unwrap();
        let one = LocalTier::new(app.clone(), tier.clone(), 1 << 20);
        let two = LocalTier::new(app.clone(), tier.clone(), 1 << 20);
        one.set(b"v", b"aaaaaaaaaa".to_vec()).unwrap();
        assert!(one.push(b"v").await.unwrap());
        assert!(two.pull(b"v").await.unwrap());
        one.set_range(b"v", 4, b"XY").unwrap();
        assert_eq!(one.push_range(b"v", 4, 2).await.unwrap(), 2);
        assert_eq!(two.pull_range(b"v", 3, 4).await.unwrap(), 4);
        assert_eq!(two.get(b"v").unwrap().unwrap(), b"aaaaXYaaaa");
        // Past the end: what exists is copied.
        assert_eq!(one.push_range(b"v", 8, 100).await.unwrap(), 2);
        assert_eq!(one.push_range(b"v", 10, 100).await.unwrap(), 0);
        // A range pulled into a host that lacks the key creates it, zero-filled.
        let three = LocalTier::new(app, tier.clone(), 1 << 20);
        assert_eq!(three.pull_range(b"v", 4, 2).await.unwrap(), 2);
        assert_eq!(three.get(b"v").unwrap().unwrap(), b"\0\0\0\0XY");
    }
}

#[test]
fn app_names_are_validated() {
    for good in ["a", "my-app_2", &"x".repeat(64)] {
        assert_eq!(AppName::new(good).unwrap().as_str(), good);
    }
    for bad in ["", &"x".repeat(65), "a:b", "a/b", "a b", "é", "a\0"] {
        let err = AppName::new(bad).unwrap_err();
        assert!(
            matches!(err, StateError::InvalidAppName { .. }),
            "{bad:?}: {err}"
        );
    }
    assert!(
        AppName::new("a:b")
            .unwrap_err()
            .to_string()
            .contains("A-Z, a-z, 0-9")
    );
}

#[test]
fn keys_are_qualified_by_their_app() {
    let app = AppName::new("shop").unwrap();
    let key = Key::new(&app, b"cart:\xff").unwrap();
    assert_eq!(key.as_bytes(), b"shop:cart:\xff");
    assert_eq!(key.app(), "shop");
    assert_eq!(key.name(), b"cart:\xff");
    assert_eq!(key.to_string(), "shop:cart:\\xff");
    assert!(matches!(Key::new(&app, b""), Err(StateError::EmptyKey)));
}

#[test]
fn local_tier_operations() {
    let a = app("app");
    let local = a.local();
    assert_eq!(local.get(b"k").unwrap(), None);
    local.set(b"k", b"0123456789".to_vec()).unwrap();
    assert_eq!(local.get_range(b"k", 8, 5).unwrap(), b"89");
    assert_eq!(local.get_range(b"k", 10, 5).unwrap(), b"");
    assert_eq!(local.set_range(b"k", 12, b"x").unwrap(), 13);
    assert_eq!(local.get(b"k").unwrap().unwrap(), b"0123456789\0\0x");
    assert_eq!(local.append(b"k", b"yz").unwrap(), 15);
    assert_eq!(local.set_range(b"none", 3, b"").unwrap(), 0);
    assert_eq!(local.get(b"none").unwrap(), None);
    assert_eq!(local.len(b"k").unwrap(), 15);
    assert!(local.delete(b"k").unwrap());
    assert!(!local.delete(b"k").unwrap());
    assert_eq!(local.len(b"k").unwrap(), 0);
    assert_eq!(local.used(), 0);
    assert!(matches!(
        local.set(&vec![0; MAX_KEY_LEN + 1], vec![]),
        Err(StateError::KeyTooLong { .. })
    ));
    assert!(matches!(
        local.set_range(b"k", MAX_VALUE_LEN, b"x"),
        Err(StateError::ValueTooLarge { .. })
    ));
}

#[test]
fn local_tier_is_bounded() {
    let local = LocalTier::new(AppName::new("app").unwrap(), Arc::new(Embedded::new()), 100);
    local.set(b"k", vec![1; 90]).unwrap(); // 1 + 90 bytes
    assert_eq!(local.used(), 91);
    let err = local.append(b"k", &[2; 10]).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Full {
                used: 91,
                wanted: 10,
                capacity: 100,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(local.len(b"k").unwrap(), 90);
    assert!(matches!(
        local.set(b"other", vec![0; 5]),
        Err(StateError::Full { .. })
    ));
    assert_eq!(local.get(b"other").unwrap(), None);
    local.set(b"k", vec![1; 10]).unwrap(); // shrinking frees
    assert_eq!(local.used(), 11);
    local.set(b"other", vec![0; 80]).unwrap();
    assert_eq!(local.used(), 11 + 85);
    local.delete(b"other").unwrap();
    local.delete(b"k").unwrap();
    assert_eq!(local.used(), 0);
}

/// What a capped embedded tier, reached directly or served, refuses and keeps.
async fn a_full_global_tier_refuses_writes_until_room_is_freed(tier: Arc<dyn GlobalTier>) {
    // Capacity 100 + one entry's overhead; each key of app `app` costs its 5 bytes
    // `app:K` and the overhead beside its value.
    const O: u64 = crate::ENTRY_OVERHEAD;
    let a = on(&tier, "app");
    a.set(b"k", vec![1; 45]).await.unwrap(); // 50 + O used
    let full = a.set(b"j", vec![2; 60]).await.unwrap_err();
    assert!(
        matches!(
            full,
            StateError::Full {
                global: true,
                used,
                wanted,
                capacity,
                ..
            } if (used, wanted, capacity) == (50 + O, 65 + O, 100 + O)
        ),
        "{full}"
    );
    assert!(
        full.to_string().contains("global state tier is full")
            && full.to_string().contains("by app app"),
        "{full}"
    );
    for refused in [
        a.append(b"k", &[0; 51]).await,
        a.set_range(b"k", 95, b"x").await,
        a.set_range(b"new", 0, &[0; 50]).await,
    ] {
        assert!(
            matches!(refused, Err(StateError::Full { global: true, .. })),
            "{refused:?}"
        );
    }
    // Nothing refused was stored, and a tier filled to the byte takes it.
    assert_eq!(a.get(b"k").await.unwrap().unwrap(), vec![1; 45]);
    assert_eq!(a.get(b"j").await.unwrap(), None);
    assert_eq!(a.get(b"new").await.unwrap(), None);
    assert_eq!(a.append(b"k", &[0; 50]).await.unwrap(), 95); // full
    // Not even an empty value fits: an entry costs its overhead.
    assert!(a.set(b"x", Vec::new()).await.is_err());
    // Deleting a value frees its room, for other apps too; so does shrinking one.
    assert!(a.delete(b"k").await.unwrap());
    let b = on(&tier, "bpp");
    b.set(b"j", vec![2; 95]).await.unwrap(); // full
    assert!(b.append(b"j", b"x").await.is_err());
    b.set(b"j", vec![2; 10]).await.unwrap();
    assert_eq!(b.append(b"j", &[2; 85]).await.unwrap(), 95); // full
}

#[tokio::test]
async fn a_full_embedded_tier_refuses_writes_until_room_is_freed() {
    let tier = Embedded::with_capacity(100 + crate::ENTRY_OVERHEAD);
    a_full_global_tier_refuses_writes_until_room_is_freed(Arc::new(tier)).await;
}

#[tokio::test]
async fn a_full_served_tier_refuses_writes_until_room_is_freed() {
    let fixture = serving(Embedded::with_capacity(100 + crate::ENTRY_OVERHEAD)).await;
    a_full_global_tier_refuses_writes_until_room_is_freed(fixture.tier.clone()).await;
}

#[tokio::test]
async fn the_embedded_tier_counts_values_and_their_keys() {
    let tier = Embedded::new();
    let key = Key::new(&AppName::new("app").unwrap(), b"k").unwrap();
    let overhead = crate::ENTRY_OVERHEAD;
    tier.set(&key, vec![0; 10]).await.unwrap();
    assert_eq!(tier.used(), 15 + overhead);
    tier.append(&key, b"abc").await.unwrap();
    tier.set_range(&key, 20, b"z").await.unwrap();
    assert_eq!(tier.used(), 5 + 21 + overhead);
    tier.delete(&key).await.unwrap();
    assert_eq!(tier.used(), 0);
}

#[test]
fn local_tier_is_shared_by_the_apps_processes_on_a_host() {
    let host = HostState::new(Arc::new(Embedded::new()), 1 << 20);
    let name = AppName::new("app").unwrap();
    let (p1, p2) = (host.app(&name), host.app(&name));
    std::thread::scope(|s| {
        for process in [&p1, &p2] {
            s.spawn(|| {
                for _ in 0..1000 {
                    process.local().append(b"log", b"x").unwrap();
                }
            });
        }
    });
    assert_eq!(p2.local().len(b"log").unwrap(), 2000);
    assert!(host.forget(&name));
    assert_eq!(host.app(&name).local().get(b"log").unwrap(), None);
}

#[tokio::test]
async fn open_chooses_the_backend() {
    assert_eq!(
        crate::open(None, ANY, None).await.unwrap().location(),
        "embedded"
    );
    for url in ["http://h", "rediss://h:6379", "", "localhost:6379"] {
        let err = crate::open(Some(url), ANY, None)
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(err, StateError::UnsupportedUrl { .. }),
            "{url}: {err}"
        );
        assert!(err.to_string().contains("redis://host:port"), "{err}");
    }
    let err = crate::open(Some("redis://:secret@h:notaport"), ANY, None)
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    // A port just freed, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let err = tokio::time::timeout(BOUND * 3, crate::open(Some(&url), ANY, None))
        .await
        .expect("gives up in bounded time")
        .err()
        .expect("fails");
    assert!(matches!(err, StateError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn redis_location_hides_nothing_but_passwords() {
    let server = RedisServer::start().expect("redis-server starts");
    let tier = crate::open(Some(&format!("{}/3", server.url())), ANY, None)
        .await
        .unwrap();
    assert_eq!(tier.location(), format!("{}/3", server.url()));
}
