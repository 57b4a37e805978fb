//! Load-time rewriting of modules so that snapshots can see their mutable globals.
//!
//! A snapshot of an instance must record the values of its mutable globals (the
//! shadow stack pointer `__stack_pointer` above all), but wasmtime only lets the
//! embedder reach globals that the module exports. So before a module is compiled,
//! nimbus adds an export named [`global_export_name`] for every mutable global the
//! module defines. Nothing else about the module changes: only its export section
//! is rewritten (or inserted where the binary format wants it), every other section
//! is copied byte for byte.
//!
//! This is a light, structural pass: it parses only what it needs (the section
//! layout, imports, globals and exports) and leaves full validation to wasmtime.

use std::collections::HashSet;
use std::ops::Range;

use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef};

/// The version of this rewriting. Anything that stores instrumented modules (the
/// on-disk artifact cache) keys by it: bump it whenever the output changes.
pub(crate) const VERSION: u32 = 1;

/// Id of the export section in the binary format.
const EXPORT_SECTION_ID: u8 = 7;

/// Kind byte of a global in an export entry.
const GLOBAL_EXTERNAL_KIND: u8 = 0x03;

/// The export name nimbus gives the module's global number `index` (in the global
/// index space, imports included).
pub(crate) fn global_export_name(index: u32) -> String {
    format!("{NAME_PREFIX}{index}")
}

/// What every name made by [`global_export_name`] starts with.
const NAME_PREFIX: &str = "nimbus:global:";

/// The global index an export name made by [`global_export_name`] stands for.
///
/// Only exact names count: `nimbus:global:07` or `nimbus:global:+7` are not 7.
pub(crate) fn global_index_of(export_name: &str) -> Option<u32> {
    let index = export_name.strip_prefix(NAME_PREFIX)?.parse().ok()?;
    (global_export_name(index) == export_name).then_some(index)
}

/// A module rewritten by [`export_globals`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instrumented {
    /// The rewritten module (the input unchanged if it had nothing to export).
    pub(crate) wasm: Vec<u8>,
    /// The global indices (imports included) of the module's defined mutable globals,
    /// in increasing order; each is exported as [`global_export_name`] of it.
    pub(crate) globals: Vec<u32>,
}

/// Why a module could not be instrumented.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstrumentError {
    /// The bytes are not a well-formed WebAssembly binary.
    #[error("malformed wasm module: {0}")]
    Malformed(#[from] wasmparser::BinaryReaderError),
    /// The bytes are a component, not a core module.
    #[error("expected a core wasm module, found a component")]
    NotAModule,
    /// The module already exports something under a name nimbus reserves (one starting
    /// with `nimbus:global:`) that is not the export nimbus would add there.
    #[error(
        "the module exports `{0}`, but names starting with `nimbus:global:` are reserved \
         for the exports nimbus adds for mutable globals"
    )]
    ReservedExportName(String),
    /// The module has more globals than a 32-bit index can number.
    #[error("the module's global index space overflows 32 bits")]
    TooManyGlobals,
    /// The rewritten export section would exceed what the binary format can encode.
    #[error("the rewritten export section is too large to encode")]
    ExportSectionTooLarge,
}

/// The module with an export added for every mutable global it *defines* (not
/// imported ones), named by [`global_export_name`].
///
/// Every other byte of the module is unchanged except the export section, which is
/// rewritten (its existing entries are kept verbatim and ours appended) or, if the
/// module had none, inserted right after the global section, where the binary format
/// puts it. If the module defines no mutable global, or already exports each of them
/// under our name, returns the input unchanged. A global the module already exports
/// under another name is exported a second time.
///
/// Names starting with `nimbus:global:` are reserved: after this pass, the exports
/// so named are exactly the module's defined mutable globals, each under its own
/// name, so [`global_index_of`] over a module's exports finds them all and nothing
/// else. A module already using such a name otherwise is refused.
///
/// Returns an error for input that is not a well-formed module; it does not
/// validate the module beyond what it reads (wasmtime does that when compiling).
pub(crate) fn export_globals(wasm: &[u8]) -> Result<Instrumented, InstrumentError> {
    let layout = Layout::parse(wasm)?;

    // Defined globals come after imported ones in the index space.
    let mut globals = Vec::new();
    for (i, &mutable) in layout.defined_mutability.iter().enumerate() {
        if mutable {
            let index = u32::try_from(i)
                .ok()
                .and_then(|i| i.checked_add(layout.imported_globals))
                .ok_or(InstrumentError::TooManyGlobals)?;
            globals.push(index);
        }
    }

    // Every export name starting with our prefix is ours: the runtime reads the
    // mutable globals back from these names, so a module may only use one for the
    // export we would add ourselves (it was instrumented before); anything else
    // (another kind, an immutable or imported global, `nimbus:global:07`) is refused.
    let mut exported = HashSet::new();
    for export in layout
        .exports
        .iter()
        .filter(|e| e.name.starts_with(NAME_PREFIX))
    {
        let ours = export.kind == ExternalKind::Global
            && global_index_of(export.name) == Some(export.index)
            && globals.binary_search(&export.index).is_ok();
        if !ours {
            return Err(InstrumentError::ReservedExportName(export.name.to_string()));
        }
        exported.insert(export.index);
    }
    let missing: Vec<(u32, String)> = globals
        .iter()
        .filter(|index| !exported.contains(index))
        .map(|&index| (index, global_export_name(index)))
        .collect();
    if missing.is_empty() {
        return Ok(Instrumented {
            wasm: wasm.to_vec(),
            globals,
        });
    }

    // The new section's contents: the new count, the old entries verbatim, then ours.
    let (old_count, old_entries, replaced) = match &layout.export_section {
        Some(s) => (s.count, &wasm[s.entries.clone()], s.section.clone()),
        // Without an export section, insert one right after the global section,
        // which is the last present of the sections that must precede it (type,
        // import, function, table, memory, tag, global): a module defining a global
        // has one, and the parser has checked the order of sections.
        None => {
            let at = layout.global_section_end;
            (0, &[][..], at..at)
        }
    };
    let count = u32::try_from(missing.len())
        .ok()
        .and_then(|n| n.checked_add(old_count))
        .ok_or(InstrumentError::ExportSectionTooLarge)?;
    let mut contents = Vec::with_capacity(old_entries.len() + 5 + missing.len() * 24);
    write_u32(&mut contents, count);
    contents.extend_from_slice(old_entries);
    for (index, name) in &missing {
        // Our names are short ASCII strings: their length always fits.
        write_u32(&mut contents, name.len() as u32);
        contents.extend_from_slice(name.as_bytes());
        contents.push(GLOBAL_EXTERNAL_KIND);
        write_u32(&mut contents, *index);
    }
    let size = u32::try_from(contents.len()).map_err(|_| InstrumentError::ExportSectionTooLarge)?;

    let mut out = Vec::with_capacity(wasm.len() + contents.len() + 6 - replaced.len());
    out.extend_from_slice(&wasm[..replaced.start]);
    out.push(EXPORT_SECTION_ID);
    write_u32(&mut out, size);
    out.extend_from_slice(&contents);
    out.extend_from_slice(&wasm[replaced.end..]);
    Ok(Instrumented { wasm: out, globals })
}

/// What [`export_globals`] needs to know about a module.
struct Layout<'a> {
    /// How many globals the module imports.
    imported_globals: u32,
    /// Whether each global the module defines is mutable, in order.
    defined_mutability: Vec<bool>,
    /// The end offset of the global section (0 if there is none).
    global_section_end: usize,
    /// The module's export section, if it has one.
    export_section: Option<ExportSection>,
    /// The module's exports.
    exports: Vec<wasmparser::Export<'a>>,
}

/// Where the export section is.
struct ExportSection {
    /// The whole section, from its id byte to its end.
    section: Range<usize>,
    /// The encoded entries, after the count.
    entries: Range<usize>,
    /// How many entries the section declares.
    count: u32,
}

impl<'a> Layout<'a> {
    /// Reads the section layout, imports, globals and exports of `wasm`.
    ///
    /// The parser rejects sections that are truncated, duplicated or out of order.
    fn parse(wasm: &'a [u8]) -> Result<Self, InstrumentError> {
        let mut layout = Layout {
            imported_globals: 0,
            defined_mutability: Vec::new(),
            global_section_end: 0,
            export_section: None,
            exports: Vec::new(),
        };
        // Sections are contiguous, so each one starts where the previous one ended
        // (the first where the header ends).
        let mut section_start = 0;
        for payload in Parser::new(0).parse_all(wasm) {
            let payload = payload?;
            let content = payload.as_section().map(|(_, range)| to_usize(range));
            // Only read for section payloads, which all have contents.
            let content_end = content.as_ref().map_or(0, |c| c.end);
            match payload {
                Payload::Version {
                    encoding, range, ..
                } => {
                    if encoding != Encoding::Module {
                        return Err(InstrumentError::NotAModule);
                    }
                    section_start = to_usize(range).end;
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        if let TypeRef::Global(_) = import?.ty {
                            layout.imported_globals = layout
                                .imported_globals
                                .checked_add(1)
                                .ok_or(InstrumentError::TooManyGlobals)?;
                        }
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        layout.defined_mutability.push(global?.ty.mutable);
                    }
                    layout.global_section_end = content_end;
                }
                Payload::ExportSection(reader) => {
                    let entries = reader.original_position() as usize..content_end;
                    let count = reader.count();
                    for export in reader {
                        layout.exports.push(export?);
                    }
                    layout.export_section = Some(ExportSection {
                        section: section_start..content_end,
                        entries,
                        count,
                    });
                }
                _ => {}
            }
            if let Some(content) = content {
                section_start = content.end;
            }
        }
        Ok(layout)
    }
}

/// A range of offsets in the module (which is in memory, so they fit a `usize`).
fn to_usize(range: Range<u64>) -> Range<usize> {
    range.start as usize..range.end as usize
}

/// Appends `value` as an unsigned LEB128.
fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use wasmtime::{
        Engine, Global, GlobalType, Instance, Linker, Module, Mutability, Store, Val, ValType,
    };

    /// Every section of `wasm` as (id, whole encoded section), in order.
    fn sections(wasm: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut start = 8;
        for payload in Parser::new(0).parse_all(wasm) {
            if let Some((id, range)) = payload.unwrap().as_section() {
                let range = to_usize(range);
                out.push((id, wasm[start..range.end].to_vec()));
                start = range.end;
            }
        }
        out
    }

    /// The ids of the sections of `wasm`, in order.
    fn section_ids(wasm: &[u8]) -> Vec<u8> {
        sections(wasm).into_iter().map(|(id, _)| id).collect()
    }

    /// The exports of `wasm` as (name, kind, index).
    fn exports(wasm: &[u8]) -> Vec<(String, ExternalKind, u32)> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                for e in reader {
                    let e = e.unwrap();
                    out.push((e.name.to_string(), e.kind, e.index));
                }
            }
        }
        out
    }

    /// The custom sections of `wasm` as (name, data).
    fn customs(wasm: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::CustomSection(c) = payload.unwrap() {
                out.push((c.name().to_string(), c.data().to_vec()));
            }
        }
        out
    }

    fn validate(wasm: &[u8]) {
        wasmparser::Validator::new().validate_all(wasm).unwrap();
    }

    fn global_i32(store: &mut Store<()>, instance: &Instance, index: u32) -> i32 {
        let global = instance
            .get_global(&mut *store, &global_export_name(index))
            .unwrap();
        global.get(&mut *store).unwrap_i32()
    }

    fn global_i64(store: &mut Store<()>, instance: &Instance, index: u32) -> i64 {
        let global = instance
            .get_global(&mut *store, &global_export_name(index))
            .unwrap();
        global.get(&mut *store).unwrap_i64()
    }

    const FULL: &str = r#"
        (module
          (import "env" "imported" (global $imported (mut i32)))
          (global $sp (mut i32) (i32.const 1024))
          (global $constant i32 (i32.const 7))
          (global $big (mut i64) (i64.const 0x100000001))
          (memory (export "memory") 1)
          (func (export "bump")
            (global.set $sp (i32.sub (global.get $sp) (i32.const 16)))
            (global.set $big (i64.mul (global.get $big) (i64.const 2)))
            (global.set $imported (i32.const 99)))
          (export "stack_pointer" (global $sp))
          (@custom "nimbus-test" (after global) "payload"))
    "#;

    #[test]
    fn exports_defined_mutable_globals() {
        let input = wat::parse_str(FULL).unwrap();
        let out = export_globals(&input).unwrap();
        // Index 0 is the import, 1 is $sp, 2 is the immutable $constant, 3 is $big.
        assert_eq!(out.globals, vec![1, 3]);
        validate(&out.wasm);

        let mut expected = exports(&input);
        expected.push(("nimbus:global:1".into(), ExternalKind::Global, 1));
        expected.push(("nimbus:global:3".into(), ExternalKind::Global, 3));
        assert_eq!(exports(&out.wasm), expected);

        // Only the export section changed; custom sections (the "name" section and
        // ours) are intact and in place.
        let strip = |wasm: &[u8]| {
            sections(wasm)
                .into_iter()
                .filter(|(id, _)| *id != EXPORT_SECTION_ID)
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&out.wasm), strip(&input));
        assert_eq!(section_ids(&out.wasm), section_ids(&input));
        let custom = customs(&out.wasm);
        assert_eq!(custom, customs(&input));
        assert!(custom.iter().any(|(name, _)| name == "name"));
        assert!(
            custom
                .iter()
                .any(|(name, data)| name == "nimbus-test" && data == b"payload")
        );

        let engine = Engine::default();
        let module = Module::new(&engine, &out.wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let imported = Global::new(
            &mut store,
            GlobalType::new(ValType::I32, Mutability::Var),
            Val::I32(5),
        )
        .unwrap();
        let mut linker = Linker::new(&engine);
        linker.define(&store, "env", "imported", imported).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();

        assert_eq!(global_i32(&mut store, &instance, 1), 1024);
        assert_eq!(global_i64(&mut store, &instance, 3), 0x1_0000_0001);
        assert!(
            instance
                .get_global(&mut store, &global_export_name(0))
                .is_none()
        );
        assert!(
            instance
                .get_global(&mut store, &global_export_name(2))
                .is_none()
        );

        let bump = instance
            .get_typed_func::<(), ()>(&mut store, "bump")
            .unwrap();
        bump.call(&mut store, ()).unwrap();
        assert_eq!(global_i32(&mut store, &instance, 1), 1008);
        assert_eq!(global_i64(&mut store, &instance, 3), 0x2_0000_0002);
        // The module's own export of $sp sees the same global.
        let alias = instance.get_global(&mut store, "stack_pointer").unwrap();
        assert_eq!(alias.get(&mut store).unwrap_i32(), 1008);
        assert_eq!(imported.get(&mut store).unwrap_i32(), 99);
    }

    #[test]
    fn inserts_export_section_where_it_belongs() {
        let input = wat::parse_str(
            r#"
            (module
              (type (func))
              (import "env" "f" (func $f))
              (memory 1)
              (table 1 funcref)
              (global $g (mut i32) (i32.const 0))
              (@custom "after-global" (after global) "x")
              (func $init (global.set $g (i32.const 42)) (data.drop $passive))
              (start $init)
              (elem (i32.const 0) $init)
              (data (i32.const 0) "hi")
              (data $passive "x"))
            "#,
        )
        .unwrap();
        // type, import, function, table, memory, global, custom, start, element,
        // data count, code, data, name.
        assert_eq!(
            section_ids(&input),
            vec![1, 2, 3, 4, 5, 6, 0, 8, 9, 12, 10, 11, 0]
        );

        let out = export_globals(&input).unwrap();
        assert_eq!(out.globals, vec![0]);
        validate(&out.wasm);
        assert_eq!(
            section_ids(&out.wasm),
            vec![1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 12, 10, 11, 0]
        );
        assert_eq!(
            exports(&out.wasm),
            vec![("nimbus:global:0".to_string(), ExternalKind::Global, 0)]
        );
        // The new section is the only difference.
        let mut without = sections(&out.wasm);
        without.remove(6);
        assert_eq!(without, sections(&input));

        let engine = Engine::default();
        let module = Module::new(&engine, &out.wasm).unwrap();
        let mut store = Store::new(&engine, ());
        let mut linker = Linker::new(&engine);
        linker.func_wrap("env", "f", || {}).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        assert_eq!(global_i32(&mut store, &instance, 0), 42);
    }

    #[test]
    fn leaves_modules_without_mutable_globals_alone() {
        for text in [
            "(module)",
            r#"(module
                 (import "env" "g" (global (mut i32)))
                 (global i64 (i64.const 3))
                 (func (export "f"))
                 (export "g" (global 0)))"#,
        ] {
            let input = wat::parse_str(text).unwrap();
            let out = export_globals(&input).unwrap();
            assert_eq!(out.wasm, input);
            assert!(out.globals.is_empty());
        }
    }

    #[test]
    fn is_idempotent() {
        let input = wat::parse_str(FULL).unwrap();
        let once = export_globals(&input).unwrap();
        let twice = export_globals(&once.wasm).unwrap();
        assert_eq!(twice, once);
    }

    #[test]
    fn refuses_reserved_names_used_otherwise() {
        for (export, name) in [
            // Our name for global 0, on a function.
            (r#"(func (export "nimbus:global:0"))"#, "nimbus:global:0"),
            // Not a global the module defines.
            (r#"(func (export "nimbus:global:9"))"#, "nimbus:global:9"),
            // A non-canonical spelling of 0.
            (
                r#"(export "nimbus:global:00" (global 0))"#,
                "nimbus:global:00",
            ),
            // The immutable global's would-be name.
            (
                r#"(export "nimbus:global:1" (global 1))"#,
                "nimbus:global:1",
            ),
            // Our name for global 0, on global 2.
            (
                r#"(export "nimbus:global:0" (global 2))"#,
                "nimbus:global:0",
            ),
        ] {
            let input = wat::parse_str(format!(
                "(module
                   (global (mut i32) (i32.const 0))
                   (global i32 (i32.const 1))
                   (global (mut i32) (i32.const 2))
                   {export})"
            ))
            .unwrap();
            let err = export_globals(&input).unwrap_err();
            assert!(
                matches!(err, InstrumentError::ReservedExportName(ref n) if n == name),
                "{export}: {err}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for index in [0, 1, 7, 10, 4096, u32::MAX] {
            assert_eq!(global_index_of(&global_export_name(index)), Some(index));
        }
        for name in [
            "nimbus:global:",
            "nimbus:global:07",
            "nimbus:global:+7",
            "nimbus:global:-1",
            "nimbus:global:4294967296",
            "nimbus:global:7 ",
            "global:7",
            "stack_pointer",
        ] {
            assert_eq!(global_index_of(name), None, "{name}");
        }
    }

    #[test]
    fn rejects_garbage() {
        let garbage: [&[u8]; 7] = [
            b"",
            b"not wasm at all",
            b"\0asm",
            b"\0asm\x02\0\0\0",
            // A section size LEB that never ends.
            b"\0asm\x01\0\0\0\x01\xff\xff\xff\xff\xff\xff",
            // A section longer than the input.
            b"\0asm\x01\0\0\0\x06\x10\x01\x7f\x01",
            // A global section whose count promises more than it holds.
            b"\0asm\x01\0\0\0\x06\x06\x02\x7f\x01\x41\x00\x0b",
        ];
        for bytes in garbage {
            let err = export_globals(bytes).unwrap_err();
            assert!(
                matches!(err, InstrumentError::Malformed(_)),
                "{bytes:?}: {err}"
            );
        }
        let component = wat::parse_str("(component)").unwrap();
        assert!(matches!(
            export_globals(&component),
            Err(InstrumentError::NotAModule)
        ));
    }

    #[test]
    fn rejects_truncated_modules() {
        let input = wat::parse_str(FULL).unwrap();
        // A cut at a section boundary leaves a well-formed (if invalid) module; a cut
        // anywhere else must be an error. No cut may panic.
        let mut boundaries = vec![8];
        let mut end = 8;
        for (_, section) in sections(&input) {
            end += section.len();
            boundaries.push(end);
        }
        for cut in 0..input.len() {
            let result = export_globals(&input[..cut]);
            if !boundaries.contains(&cut) {
                assert!(
                    result.is_err(),
                    "cut at {cut} of {} was accepted",
                    input.len()
                );
            }
        }
    }

    #[test]
    fn leb128() {
        for (value, bytes) in [
            (0u32, &[0x00][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (624485, &[0xe5, 0x8e, 0x26]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut out = Vec::new();
            write_u32(&mut out, value);
            assert_eq!(out, bytes);
        }
    }
}
