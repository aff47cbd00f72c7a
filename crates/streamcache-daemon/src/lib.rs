//! The `streamcache` binary's insides: a daemon that runs a command once per key and
//! streams its output to every caller, and the client that git's
//! `uploadpack.packObjectsHook` runs. User documentation: `docs/DAEMON.md`.
//!
//! ```text
//!  upload-pack --argv, stdin--> streamcache exec --request frame + stdin--> streamcache serve
//!       ^                              |                                        |
//!       +--stdout / stderr / exit------+<--H, entry frames (sendfile), T--------+
//!                                                                               |
//!                                     find_or_create(key) --miss--> producer thread runs
//!                                                                   the command, writes
//!                                                                   O/E/X frames into the entry
//! ```
//!
//! Only [`wire`] is public: the frame format and its decoders, for fuzzing and
//! property tests. Everything else is reached through [`main`].

mod allow;
mod chain;
mod check;
mod cli;
mod client;
mod descriptors;
mod explain;
mod key;
mod metrics;
mod peers;
mod producer;
mod queue;
mod scrape;
mod server;
mod settings;
mod socket;
mod spill;
mod state;
mod status;
mod supervisor;
pub mod wire;

pub use cli::main;
