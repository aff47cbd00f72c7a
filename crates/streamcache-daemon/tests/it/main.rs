//! Integration tests of the `streamcache` binary: real daemon processes on temporary
//! sockets, real child processes, and the real git. The fault, abuse, security, limits
//! and load suites (`faults`, `abuse`, `security`, `limits`, `load`) need root for tmpfs
//! mounts and for clients of another uid; without it those tests fail (CI runs as
//! root).

mod abuse;
mod contrib;
mod daemon;
mod exec;
mod faults;
mod frontends;
mod git;
mod limits;
mod load;
mod manual;
mod remote;
mod restart;
// The SeaweedFS launcher of the library's tests, shared rather than copied.
#[path = "../../../streamcache/tests/it/s3.rs"]
mod s3;
mod security;
mod status;
mod support;
