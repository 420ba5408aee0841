//! The library behind the `windlass` binary: the demos and the job queue's commands, so that
//! examples and tests can run them too. The binary (`src/main.rs`) only parses arguments and prints.

pub mod demo;
pub mod flows;
pub mod queue;
