//! The subcommands besides `server` and `client`, one file each.

pub(crate) mod check;
pub(crate) mod convert;
pub(crate) mod demo;
pub(crate) mod manual;
pub(crate) mod reload;
