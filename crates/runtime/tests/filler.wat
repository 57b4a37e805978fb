;; A reactor whose `fill` writes its call count over 64 MiB of memory, `check`
;; fails unless a byte in each page of those holds it, `poke` writes one page past
;; them and `scribble_then_crash` writes over them all and traps. Shared by the
;; runtime's and the service manager's tests of large commits.
(module
  (memory (export "memory") 1025)
  (global $calls (mut i32) (i32.const 0))
  (func (export "fill")
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (memory.fill (i32.const 0) (global.get $calls) (i32.const 0x4000000)))
  (func (export "check") (result i32)
    (local $at i32)
    (loop $pages
      (if (i32.ne (i32.load8_u (local.get $at)) (global.get $calls))
        (then (return (i32.const 1))))
      (local.set $at (i32.add (local.get $at) (i32.const 4095)))
      (br_if $pages (i32.lt_u (local.get $at) (i32.const 0x4000000))))
    (i32.const 0))
  (func (export "poke") (i32.store8 (i32.const 0x4000000) (i32.const 1)))
  (func (export "scribble_then_crash")
    (memory.fill (i32.const 0) (i32.const 0xee) (i32.const 0x4000000))
    unreachable))
