//! Simulated vLLM and load generator.
