//! W5: git clone storm through the daemon.

use std::io;

use crate::ctx::Ctx;
use crate::sys::Fs;

pub(crate) fn run(ctx: &mut Ctx, fs: Fs) -> io::Result<()> {
    ctx.say(&format!("w5 {}: not implemented yet", fs.name()));
    Ok(())
}
