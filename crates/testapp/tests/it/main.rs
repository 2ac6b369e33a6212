//! End-to-end tests of the `fleet-testapp` binary: real processes, real sockets and
//! signals, each with a hard deadline and killed on drop. Compiled into one binary.

mod harness;

mod drain;
mod flags;
mod serve;
