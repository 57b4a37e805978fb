//! The embedded cluster: the process table's life cycle, placement over hosts, the
//! per-host quota, and the kernel's errors for unknown processes.

use std::sync::Arc;
use std::time::Duration;

use nimbus_core::{ExitStatus, HostId, Limits, Pid, ProcessState};
use nimbus_node::{Cluster, ClusterConfig, ClusterError, ModuleSource, RootProcess};
use nimbus_runtime::{AbiError, Input, Kernel, ModuleBytes, Output};
use tokio::sync::oneshot;

/// Waits for one message, then exits 0.
const IDLE: &str = r#"(module
  (import "nimbus" "recv" (func $recv (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $recv (i32.const 0) (i32.const 1024) (i32.const 1024) (i32.const 1032)))))"#;

fn cluster(hosts: u16, max_processes_per_host: usize) -> (Arc<Cluster>, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut config = ClusterConfig::new(data.path());
    config.spawn_wait = Duration::from_millis(300);
    config.hosts = hosts;
    config.max_processes_per_host = max_processes_per_host;
    config.runtime.max_live_processes = 16;
    config.runtime.max_memory = 1 << 20;
    (Cluster::new(&config).unwrap(), data)
}

fn idle() -> RootProcess {
    RootProcess {
        app: nimbus_state::AppName::new("test").unwrap(),
        module: ModuleBytes::new(wat::parse_str(IDLE).unwrap()),
        modules: ModuleSource::None,
        args: vec!["idle".into()],
        env: vec![],
        dirs: vec![],
        stdin: Input::Null,
        output: (Output::Null, Output::Null),
        limits: Limits::default(),
    }
}

/// An id no process has: the sender of messages from outside in these tests.
fn outsider() -> Pid {
    Pid::new(HostId(999), 1)
}

async fn release(cluster: &Cluster, started: Vec<(Pid, oneshot::Receiver<ExitStatus>)>) {
    for (pid, exited) in started {
        cluster.send(outsider(), pid, b"go".to_vec()).await.unwrap();
        assert_eq!(exited.await.unwrap(), ExitStatus::Exited(0));
    }
}

#[tokio::test]
async fn processes_are_listed_while_alive_and_leave_the_table_when_they_end() {
    let (cluster, _data) = cluster(1, 100);
    let started: Vec<_> = (0..3).map(|_| cluster.start(idle()).unwrap()).collect();
    let listed = cluster.processes();
    assert_eq!(listed.len(), 3);
    for (info, (pid, _)) in listed.iter().zip(&started) {
        assert_eq!((info.pid, info.parent, info.host), (*pid, None, HostId(1)));
        assert!(matches!(
            info.state,
            ProcessState::Starting | ProcessState::Running
        ));
    }
    release(&cluster, started).await;
    assert!(cluster.processes().is_empty());
}

#[tokio::test]
async fn placement_spreads_processes_over_hosts() {
    let (cluster, _data) = cluster(3, 100);
    let started: Vec<_> = (0..6).map(|_| cluster.start(idle()).unwrap()).collect();
    let mut per_host = [0; 3];
    for info in cluster.processes() {
        per_host[info.host.0 as usize - 1] += 1;
    }
    assert_eq!(per_host, [2, 2, 2]);
    release(&cluster, started).await;
}

#[tokio::test]
async fn a_full_host_refuses_more_processes() {
    let (cluster, _data) = cluster(1, 2);
    let started: Vec<_> = (0..2).map(|_| cluster.start(idle()).unwrap()).collect();
    assert!(matches!(
        cluster.start(idle()),
        Err(ClusterError::NoCapacity(_))
    ));
    release(&cluster, started).await;
    // Room again once they ended.
    let again = cluster.start(idle()).unwrap();
    release(&cluster, vec![again]).await;
}

#[tokio::test]
async fn a_spawn_waits_for_room_then_fails_clearly() {
    let (cluster, _data) = cluster(1, 2);
    let (root, root_exited) = cluster.start(idle()).unwrap();
    let child = cluster.spawn(root, String::new(), vec![]).await.unwrap();
    // Full: this spawn waits, and goes ahead once the child ends.
    let waiting = {
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.spawn(root, String::new(), vec![]).await })
    };
    cluster
        .send(outsider(), child, b"go".to_vec())
        .await
        .unwrap();
    let second = waiting.await.unwrap().unwrap();
    assert_ne!(second, child);
    // Full again and nothing ends: after the bounded wait, the quota error.
    assert_eq!(
        cluster.spawn(root, String::new(), vec![]).await,
        Err(AbiError::Quota)
    );
    cluster
        .send(outsider(), second, b"go".to_vec())
        .await
        .unwrap();
    release(&cluster, vec![(root, root_exited)]).await;
}

#[tokio::test]
async fn unknown_processes_are_errors() {
    let (cluster, _data) = cluster(2, 100);
    let nobody = Pid::new(HostId(1), 12345);
    let elsewhere = Pid::new(HostId(77), 1);
    for to in [nobody, elsewhere] {
        let sent = cluster.send(outsider(), to, b"x".to_vec()).await;
        assert_eq!(sent, Err(AbiError::NoSuchProcess));
    }
    let (pid, exited) = cluster.start(idle()).unwrap();
    assert_eq!(cluster.wait(pid, nobody).await, Err(AbiError::NotChild));
    release(&cluster, vec![(pid, exited)]).await;
}

#[tokio::test]
async fn a_killed_process_ends_as_killed() {
    let (cluster, _data) = cluster(1, 100);
    let (pid, exited) = cluster.start(idle()).unwrap();
    cluster.kill(pid).unwrap();
    assert_eq!(
        exited.await.unwrap(),
        ExitStatus::Failed(nimbus_core::Failure::Killed)
    );
    assert!(cluster.processes().is_empty());
    assert_eq!(cluster.kill(pid), Err(AbiError::NoSuchProcess));
}

#[tokio::test]
async fn a_spinning_process_leaves_its_thread_to_others_and_ends_by_its_deadline_or_kill() {
    // `tokio::test` runs the host on one thread: the short job can only run if
    // the two loops (no call, no memory access) yield their time slices.
    let (cluster, _data) = cluster(1, 100);
    let spin = |timeout| RootProcess {
        module: ModuleBytes::new(
            wat::parse_str(r#"(module (func (export "_start") (loop $l (br $l))))"#).unwrap(),
        ),
        limits: Limits {
            timeout,
            ..Limits::default()
        },
        ..idle()
    };
    let deadline = Duration::from_millis(200);
    let (spinning, killed) = cluster.start(spin(None)).unwrap();
    let (_, stopped) = cluster.start(spin(Some(deadline))).unwrap();
    let short = RootProcess {
        module: ModuleBytes::new(wat::parse_str(r#"(module (func (export "_start")))"#).unwrap()),
        ..idle()
    };
    let (_, short) = cluster.start(short).unwrap();
    assert_eq!(short.await.unwrap(), ExitStatus::Exited(0));
    cluster.kill(spinning).unwrap();
    assert_eq!(
        killed.await.unwrap(),
        ExitStatus::Failed(nimbus_core::Failure::Killed)
    );
    assert_eq!(
        stopped.await.unwrap(),
        ExitStatus::Failed(nimbus_core::Failure::Deadline(deadline))
    );
}

/// Takes the global lock of key "k" for an hour, waiting up to 30 s for it, and
/// exits with `state_lock`'s result negated (0 when it took the lock), still holding it.
const LOCKER: &str = r#"(module
  (import "nimbus" "state_lock" (func $lock (param i32 i32 i64 i64) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "k")
  (func (export "_start")
    (call $exit (i32.sub (i32.const 0)
      (call $lock (i32.const 0) (i32.const 1) (i64.const 3600000) (i64.const 30000))))))"#;

#[tokio::test]
async fn the_locks_of_a_process_are_released_when_it_ends() {
    let (cluster, _data) = cluster(1, 100);
    let locker = || RootProcess {
        module: ModuleBytes::new(wat::parse_str(LOCKER).unwrap()),
        ..idle()
    };
    // Each takes the lock its predecessor held when it ended; a lock left behind
    // would hold the next one back for its hour's lease, past the 30 s it waits.
    for _ in 0..3 {
        let (_, exited) = cluster.start(locker()).unwrap();
        assert_eq!(exited.await.unwrap(), ExitStatus::Exited(0));
    }
}
