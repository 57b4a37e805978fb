//! Long-running `nimbus` child processes for benchmarks that cross OS processes:
//! a `nimbus up`, or a planner with workers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// A `nimbus` child process with its own data directory, stopped on drop.
pub struct Daemon {
    child: Child,
    _data: tempfile::TempDir,
}

impl Daemon {
    /// Starts `nimbus ARGS`; returns it and the rest of each of its first lines,
    /// which must start with `prefixes` in order (its announced addresses). Its
    /// client config (what `nimbus up` writes) goes to its data directory, never
    /// the user's.
    pub fn start(args: &[&str], prefixes: &[&str]) -> (Daemon, Vec<String>) {
        let data = tempfile::tempdir().expect("temporary directory");
        let mut child = crate::nimbus_command()
            .args(args)
            .env("NIMBUS_DATA_DIR", data.path())
            .env("NIMBUS_CONFIG", data.path().join("config.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nimbus starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let announced = prefixes
            .iter()
            .map(|prefix| {
                let line = lines.next().expect("an announcement").expect("a line");
                line.strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                    .to_owned()
            })
            .collect();
        (Daemon { child, _data: data }, announced)
    }
}

impl Daemon {
    /// The admin token a `nimbus up` wrote to its client config before announcing
    /// its addresses.
    pub fn token(&self) -> String {
        let config = std::fs::read(self._data.path().join("config.json")).expect("a client config");
        let config: serde_json::Value = serde_json::from_slice(&config).expect("JSON");
        config["token"].as_str().expect("a token").to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A planner and workers, each its own OS process on loopback.
pub struct WorkerCluster {
    /// The planner's address, for `nimbus run --planner`.
    pub planner: String,
    _daemons: Vec<Daemon>,
}

impl WorkerCluster {
    /// A planner with `workers` workers joined, each offering one core (and so
    /// running its guests on one thread): the benchmarks place one rank per worker,
    /// as OpenMPI runs each rank as one single-threaded process.
    pub fn start(workers: usize) -> WorkerCluster {
        let (planner, mut addr) = Daemon::start(
            &["planner", "--listen", "127.0.0.1:0"],
            &["nimbus: planner listening on "],
        );
        let planner_addr = addr.remove(0);
        let mut daemons = vec![planner];
        let joined = format!("nimbus: worker joined {planner_addr} as host ");
        for _ in 0..workers {
            let (worker, _) = Daemon::start(
                &["worker", "--planner", &planner_addr, "--cpus", "1"],
                &[&joined],
            );
            daemons.push(worker);
        }
        WorkerCluster {
            planner: planner_addr,
            _daemons: daemons,
        }
    }
}
