//! The baseline of whole-program benchmarks: a WASI command run by plain wasmtime,
//! as the `wasmtime run` CLI runs it (the CLI itself is not installed here).

use std::path::PathBuf;

use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// A module compiled by an engine of wasmtime's default configuration (so without
/// epoch interruption), linked against synchronous WASI preview 1 whose filesystem
/// calls run on the calling thread: what `wasmtime run` does.
pub struct PlainWasmtime {
    engine: Engine,
    module: Module,
    linker: Linker<WasiP1Ctx>,
}

impl PlainWasmtime {
    /// `wasm` compiled and linked; panics if it does not compile.
    pub fn new(wasm: &[u8]) -> PlainWasmtime {
        let engine = Engine::new(&Config::new()).expect("engine");
        let module = Module::new(&engine, wasm).expect("module compiles");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |ctx| ctx).expect("WASI links");
        PlainWasmtime {
            engine,
            module,
            linker,
        }
    }

    /// Runs the command with `args` (after `argv[0]`) and `dirs` (host, guest)
    /// preopened, and returns its stdout; panics unless it exits 0. Call it from a
    /// thread outside any tokio runtime, as the CLI's thread is.
    pub fn run(&self, args: &[&str], dirs: &[(PathBuf, &str)]) -> String {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let mut wasi = WasiCtxBuilder::new();
        wasi.allow_blocking_current_thread(true)
            .arg("bench")
            .args(args)
            .stdout(stdout.clone())
            .inherit_stderr();
        for (host, guest) in dirs {
            wasi.preopened_dir(host, guest, FsPerms::ReadWrite)
                .expect("directory opens");
        }
        let mut store = Store::new(&self.engine, wasi.build_p1());
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .expect("instantiates");
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .expect("a command");
        match start.call(&mut store, ()) {
            Ok(()) => {}
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                _ => panic!("the baseline run failed: {e:?}"),
            },
        }
        drop(store);
        String::from_utf8_lossy(&stdout.contents())
            .trim()
            .to_owned()
    }
}
