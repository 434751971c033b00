//! Bounds the number of distinct values one label field can give a stream label.
//!
//! Loki indexes every distinct label set as a stream, and label fields such as `model`
//! carry what a client sent: one client cycling through made-up model names would
//! otherwise create a stream per name, until Loki's per-tenant stream limit rejects
//! every push (for everyone). The first `max` distinct values of a field are labels as
//! usual; later new values become [`OVERFLOW_VALUE`], counted. The line itself is never
//! changed, so `| json | model="…"` still finds the real value.
//!
//! Values are remembered for the life of the process (at most `max` of them per field,
//! each at most the label value limit), so the set of values that get through can
//! differ after a restart; the bound holds per process either way.

use std::collections::HashSet;

/// Label value used once a field has reached its limit of distinct values.
pub const OVERFLOW_VALUE: &str = "other";

/// The distinct values seen for one label field.
#[derive(Debug, Clone)]
pub struct ValueLimit {
    max: usize,
    seen: HashSet<Box<str>>,
    /// The last value let through: consecutive lines mostly repeat it, and a compare is
    /// cheaper than a hash.
    last: String,
    capped: u64,
    warned: bool,
}

impl ValueLimit {
    /// A limit of `max` distinct values (`0` means no limit).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: HashSet::new(),
            last: String::new(),
            capped: 0,
            warned: false,
        }
    }

    /// The label value to use for `value`: itself while it is one of the first `max`
    /// distinct values, [`OVERFLOW_VALUE`] after.
    pub fn admit<'a>(&mut self, value: &'a str) -> &'a str {
        if self.max == 0 || self.last == value {
            return value;
        }
        if !self.seen.contains(value) {
            if self.seen.len() >= self.max {
                self.capped += 1;
                return OVERFLOW_VALUE;
            }
            self.seen.insert(Box::from(value));
        }
        self.last.clear();
        self.last.push_str(value);
        value
    }

    /// Values replaced by [`OVERFLOW_VALUE`] since the last call, and whether this is
    /// the first time any was (to log the limit once).
    pub fn take_capped(&mut self) -> (u64, bool) {
        let n = std::mem::take(&mut self.capped);
        let first = n > 0 && !self.warned;
        self.warned |= n > 0;
        (n, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_values_pass_later_new_ones_are_other() {
        let mut l = ValueLimit::new(2);
        assert_eq!(l.admit("a"), "a");
        assert_eq!(l.admit("b"), "b");
        assert_eq!(l.admit("a"), "a");
        assert_eq!(l.admit("c"), OVERFLOW_VALUE);
        assert_eq!(l.admit("b"), "b");
        assert_eq!(l.admit("d"), OVERFLOW_VALUE);
        assert_eq!(l.take_capped(), (2, true));
        assert_eq!(l.take_capped(), (0, false));
        assert_eq!(l.admit("e"), OVERFLOW_VALUE);
        assert_eq!(l.take_capped(), (1, false));
    }

    #[test]
    fn zero_means_unlimited() {
        let mut l = ValueLimit::new(0);
        for i in 0..1000 {
            let v = i.to_string();
            assert_eq!(l.admit(&v), v);
        }
        assert_eq!(l.take_capped(), (0, false));
        assert!(l.seen.is_empty());
    }
}
