//! Refusal detection (placeholder, filled in by the refusal module work).
