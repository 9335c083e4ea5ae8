//! Server names as TLS clients send them (SNI), shared by the TLS listeners' certificate
//! choice and the L4 passthrough's routing: the pattern grammar (a host name or `*.suffix`,
//! the wildcard covering one or more labels) and a table looked up exact name first, then the
//! longest matching wildcard, case-insensitively.

use std::collections::HashMap;

/// Whether `name` (lower case) is a host name, optionally `*.` + host name.
pub fn is_valid(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Lower-case a configured `sni` pattern and check its form: an exact host name or
/// `*.suffix` (the wildcard matches one or more labels).
pub fn normalize_pattern(pattern: &str) -> Result<String, String> {
    let p = pattern.to_ascii_lowercase();
    let valid = is_valid(&p);
    if valid {
        Ok(p)
    } else {
        Err(format!(
            "invalid sni `{pattern}`: expected a host name like \"db.example.com\" or a wildcard like \"*.apps.example.com\""
        ))
    }
}

/// Server names to values: exact names first, then the longest matching `*.` wildcard.
/// Names compare case-insensitively.
#[derive(Debug, Clone)]
pub struct ServerNameTable<T> {
    exact: HashMap<String, T>,
    /// `(".suffix", value)`, longest suffix first.
    wildcards: Vec<(String, T)>,
}

impl<T> Default for ServerNameTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcards: Vec::new(),
        }
    }
}

impl<T> ServerNameTable<T> {
    /// A table of `(pattern, value)` pairs; invalid patterns (refused by the configuration's
    /// validation) are skipped, and the first of duplicate patterns wins.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut table = Self::default();
        for (pattern, value) in entries {
            let _ = table.insert(&pattern, value);
        }
        table
    }

    /// Add one entry; `Err(false)` when `pattern` is not a valid name or wildcard,
    /// `Err(true)` when the table already has it (the first one is kept).
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<(), bool> {
        let p = normalize_pattern(pattern.trim_end_matches('.')).map_err(|_| false)?;
        match p.strip_prefix('*') {
            Some(suffix) => {
                if self.wildcards.iter().any(|(s, _)| s == suffix) {
                    return Err(true);
                }
                self.wildcards.push((suffix.to_owned(), value));
                self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            }
            None => match self.exact.entry(p) {
                std::collections::hash_map::Entry::Occupied(_) => return Err(true),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(value);
                }
            },
        }
        Ok(())
    }

    /// Every entry, as `(name or ".suffix" of a wildcard, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.exact
            .iter()
            .chain(self.wildcards.iter().map(|(s, v)| (s, v)))
            .map(|(n, v)| (n.as_str(), v))
    }

    /// Whether the table has no entry.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// The value for server name `name` (a trailing dot is ignored).
    pub fn lookup(&self, name: &str) -> Option<&T> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(v) = self.exact.get(name) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_refuses_bad_and_duplicate_names_and_keeps_the_first() {
        let mut t = ServerNameTable::default();
        assert_eq!(t.insert("A.example.com.", 1), Ok(()));
        assert_eq!(t.insert("a.example.com", 2), Err(true));
        assert_eq!(t.insert("*.example.com", 3), Ok(()));
        assert_eq!(t.insert("*.EXAMPLE.com", 4), Err(true));
        assert_eq!(t.insert("a..b", 5), Err(false));
        assert_eq!(t.lookup("a.example.com"), Some(&1));
        assert_eq!(t.lookup("b.example.com"), Some(&3));
        assert_eq!(t.iter().count(), 2);
    }
}
