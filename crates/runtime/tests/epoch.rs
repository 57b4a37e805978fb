//! Epoch interruption as nimbus compiles it (`vendor/wasmtime-internal-cranelift`:
//! the check's slow path calls a trampoline that preserves every register). A loop
//! carrying many values in registers, whose check takes the slow path at every
//! outer iteration, computes exactly what it computes without epochs, whether the
//! deadline callback lets it continue or yields to the executor; and one that
//! interrupts it traps with a backtrace through the loop's function.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use wasmtime::{Config, Engine, Linker, Module, Store, Trap, UpdateDeadline, WasmBacktrace};

/// Values of each type the loop carries.
const LANES: usize = 8;

/// `run(outer, inner)`: `outer` times, calls `host.tick` and then iterates `inner`
/// times over `LANES` i64 values (each a linear congruential generator fed by the
/// next) and `LANES` f64 values (each the running sum of its i64's top bits), all
/// live across the loop's epoch check; returns a digest of them all, so a value
/// the check's slow path clobbered would show.
fn loops_wat() -> String {
    let lanes = 0..LANES;
    let mut wat = String::from(
        "(module (import \"host\" \"tick\" (func $tick))\n\
         (func $run (export \"run\") (param $outer i32) (param $inner i32) (result f64)\n\
         (local $i i32) (local $j i32)\n",
    );
    for k in lanes.clone() {
        wat += &format!("(local $f{k} f64) (local $n{k} i64)\n");
    }
    for k in lanes.clone() {
        wat += &format!(
            "(local.set $f{k} (f64.const {k}.5)) (local.set $n{k} (i64.const {}))\n",
            1_000_003 * (k + 1)
        );
    }
    wat += "(loop $outer (call $tick) (local.set $j (i32.const 0)) (loop $inner\n";
    for k in lanes.clone() {
        let next = (k + 1) % LANES;
        wat += &format!(
            "(local.set $n{k} (i64.add (i64.mul (local.get $n{k}) \
             (i64.const 6364136223846793005)) (local.get $n{next})))\n\
             (local.set $f{k} (f64.add (local.get $f{k}) \
             (f64.convert_i64_s (i64.shr_s (local.get $n{k}) (i64.const 40)))))\n"
        );
    }
    wat += "(local.set $j (i32.add (local.get $j) (i32.const 1)))\n\
            (br_if $inner (i32.lt_u (local.get $j) (local.get $inner))))\n\
            (local.set $i (i32.add (local.get $i) (i32.const 1)))\n\
            (br_if $outer (i32.lt_u (local.get $i) (local.get $outer))))\n";
    let mut digest = "(f64.const 0)".to_owned();
    for k in lanes {
        digest = format!(
            "(f64.add (f64.mul {digest} (f64.const 3)) \
             (f64.add (local.get $f{k}) (f64.convert_i64_s (i64.shr_s (local.get $n{k}) (i64.const 11)))))"
        );
    }
    wat + &digest + "))"
}

const OUTER: u32 = 200;
const INNER: u32 = 1_000;

/// The loop's function, instantiated.
type Run = wasmtime::TypedFunc<(u32, u32), f64>;

/// A store on an engine with or without epoch interruption whose `host.tick`
/// advances the epoch past the store's deadline, so that the first check after
/// each tick takes the slow path; `deadline` answers it (and counts the times).
fn instance_with(
    epochs: bool,
    deadline: impl FnMut(u32) -> UpdateDeadline + Send + Sync + 'static,
) -> (Store<()>, Run, Arc<AtomicU32>) {
    let mut config = Config::new();
    config.epoch_interruption(epochs);
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, loops_wat()).unwrap();
    let mut linker = Linker::new(&engine);
    linker
        .func_wrap("host", "tick", |caller: wasmtime::Caller<'_, ()>| {
            caller.engine().increment_epoch();
        })
        .unwrap();
    let mut store = Store::new(&engine, ());
    let slow_paths = Arc::new(AtomicU32::new(0));
    if epochs {
        store.set_epoch_deadline(1);
        let (counted, mut deadline) = (slow_paths.clone(), deadline);
        store.epoch_deadline_callback(move |_| {
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(deadline(n))
        });
    }
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let run = instance.get_typed_func(&mut store, "run").unwrap();
    (store, run, slow_paths)
}

/// What the loop computes with no epoch checks at all.
fn without_epochs() -> f64 {
    let (mut store, run, _) = instance_with(false, |_| UpdateDeadline::Interrupt);
    run.call(&mut store, (OUTER, INNER)).unwrap()
}

#[test]
fn a_loop_through_the_slow_path_computes_what_it_computes_without_epochs() {
    let (mut store, run, slow_paths) = instance_with(true, |_| UpdateDeadline::Continue(1));
    let result = run.call(&mut store, (OUTER, INNER)).unwrap();
    assert_eq!(slow_paths.load(Ordering::Relaxed), OUTER);
    assert_eq!(result.to_bits(), without_epochs().to_bits());
}

#[tokio::test]
async fn a_loop_that_yields_at_each_slow_path_computes_what_it_computes_without_epochs() {
    let (mut store, run, slow_paths) = instance_with(true, |_| {
        UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
    });
    let result = run.call_async(&mut store, (OUTER, INNER)).await.unwrap();
    assert_eq!(slow_paths.load(Ordering::Relaxed), OUTER);
    assert_eq!(result.to_bits(), without_epochs().to_bits());
}

#[test]
fn an_interrupted_loop_traps_with_its_backtrace() {
    let (mut store, run, slow_paths) = instance_with(true, |n| match n {
        5 => UpdateDeadline::Interrupt,
        _ => UpdateDeadline::Continue(1),
    });
    let error = run.call(&mut store, (OUTER, INNER)).unwrap_err();
    assert_eq!(error.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
    let backtrace = error.downcast_ref::<WasmBacktrace>().expect("a backtrace");
    assert_eq!(backtrace.frames()[0].func_name(), Some("run"));
    assert_eq!(slow_paths.load(Ordering::Relaxed), 5);
}
