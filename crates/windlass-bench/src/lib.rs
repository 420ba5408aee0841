//! Measurement harness for Windlass.
//!
//! - [`alloc::CountingAlloc`]: a global allocator that counts allocations and tracks the
//!   current and peak heap size, so benchmarks can report heap allocations per call and the
//!   demo can report peak memory without reading `/proc`.
//!
//! The criterion benchmarks live in `benches/` (run `cargo bench -p windlass-bench`).

pub mod alloc;
