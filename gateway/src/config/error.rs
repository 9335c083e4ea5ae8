//! Configuration errors: each names the file, line and column, and what was expected.

use std::fmt;
use std::ops::Range;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a place in the file.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors for one file, turning byte offsets into lines and columns.
#[derive(Debug)]
pub struct ErrorSink<'a> {
    file: &'a str,
    text: &'a str,
    /// The errors collected so far.
    pub errors: Vec<ConfigError>,
}

impl<'a> ErrorSink<'a> {
    /// A sink for `file` whose contents are `text`.
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            errors: Vec::new(),
        }
    }

    /// Record a problem at a byte range of the file (or without a place).
    pub fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let (line, column) = match span {
            Some(span) => {
                let (l, c) = line_col(self.text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Record a problem reported by the TOML parser or serde.
    pub fn toml(&mut self, err: &toml::de::Error) {
        let mut message = err.message().trim().replace('\n', " ");
        if message == "invalid socket address syntax" {
            message.push_str(
                ": expected an address with a port, like \"127.0.0.1:8080\" or \"[::1]:8080\"",
            );
        }
        self.at(err.span(), message);
    }

    /// The errors in file order (those without a place last).
    pub fn into_sorted(mut self) -> Vec<ConfigError> {
        self.errors
            .sort_by_key(|e| (e.line.is_none(), e.line, e.column));
        self.errors
    }

    /// Whether any problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 11), (2, 6));
    }

    #[test]
    fn display_has_file_line_column() {
        let mut sink = ErrorSink::new("x.toml", "a = 1\nb = 2\n");
        sink.at(Some(6..7), "unknown key `b`");
        assert_eq!(sink.errors[0].to_string(), "x.toml:2:1: unknown key `b`");
        sink.at(None, "no listener");
        assert_eq!(sink.errors[1].to_string(), "x.toml: no listener");
    }
}
