//! Fuzzing of the readers of the files a user hands over: `.npy` vectors (and pre-encoded queries),
//! collections (TSV and JSONL, with titles), queries and ids, qrels and runs, and an index's manifest.
//!
//! A coverage-less mutation fuzzer that runs as an ordinary test on the stable toolchain: each
//! target's seeds (`fuzz/corpus/<target>/`) are run, then inputs mutated from them and from the
//! inputs that showed a new behaviour, for a fixed count or a time (`SIMLM_FUZZ_SECS`). `targets`
//! holds the properties checked, `mutate` the mutations, `driver` the loop, and `guard` the memory
//! limit. `tests/fuzz.rs` has one test per target.

pub mod driver;
pub mod guard;
pub mod mutate;
pub mod targets;
