//! llm-gateway binary entry point.
fn main() {}
