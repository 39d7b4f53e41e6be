//! load generator
fn main() {}
