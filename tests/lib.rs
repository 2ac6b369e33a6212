//! Shared harness for the end-to-end tests lives in `it/harness.rs`; this library is empty.
