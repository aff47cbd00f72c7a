//! Integration tests of the `streamcache` binary: real daemon processes on temporary
//! sockets, real child processes, and the real git.

mod daemon;
mod exec;
mod git;
mod support;
