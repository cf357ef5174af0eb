//! `fenced-chaos`: placeholder while the checkers land.

mod check;
mod record;

fn main() {}
