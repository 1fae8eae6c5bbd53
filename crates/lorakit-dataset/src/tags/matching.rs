//! When two tags count as the same tag.

/// How tags are compared by `add` (skip if present), `remove`, `replace`,
/// `move-to-front`, `dedupe` and the statistics. By default two tags match
/// only when they are identical after trimming.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TagMatching {
    /// `Long Hair` matches `long hair`.
    pub ignore_case: bool,
    /// `long_hair` matches `long hair`. Off by default because some tags
    /// (emoticons such as `^_^`) need their underscores.
    pub underscores_as_spaces: bool,
}

impl TagMatching {
    /// The form of `tag` that is compared: two tags match when their keys are equal.
    pub fn key(&self, tag: &str) -> String {
        let tag = tag.trim();
        let tag = if self.underscores_as_spaces { tag.replace('_', " ") } else { tag.to_owned() };
        if self.ignore_case {
            tag.to_lowercase()
        } else {
            tag
        }
    }

    /// Whether `a` and `b` are the same tag.
    pub fn same(&self, a: &str, b: &str) -> bool {
        self.key(a) == self.key(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_by_default() {
        let m = TagMatching::default();
        assert!(m.same(" dog ", "dog"));
        assert!(!m.same("Dog", "dog"));
        assert!(!m.same("long_hair", "long hair"));
    }

    #[test]
    fn options_widen_matching() {
        let m = TagMatching { ignore_case: true, underscores_as_spaces: true };
        assert!(m.same("Long_Hair", "long hair"));
    }
}
