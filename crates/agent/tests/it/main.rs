//! The agent in-process: the daemon on a temp home and its own socket (`harness`),
//! driven through its real gRPC API with real child processes. One test binary.

mod fixtures;
mod harness;
mod operations;
