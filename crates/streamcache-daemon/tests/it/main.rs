//! Integration tests of the `streamcache` binary: real daemon processes on temporary
//! sockets, real child processes, and the real git. The fault, abuse, security, limits
//! and load suites (`faults`, `abuse`, `security`, `limits`, `load`) need root for tmpfs
//! mounts and for clients of another uid; without it those tests fail (CI runs as
//! root).

mod abuse;
mod daemon;
mod exec;
mod faults;
mod git;
mod limits;
mod load;
mod restart;
mod security;
mod support;
