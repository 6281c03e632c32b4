//! Diagnostics: what is wrong, where (`file:line:column`), and how to fix it.

use std::fmt;

/// One problem in a workflow file, at a 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}:{}: {}", self.path, self.line, self.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(formatter, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Writes diagnostics one after another, each on its own line(s), as a command line would print them.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(|diagnostic| format!("{diagnostic}\n")).collect()
}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.line, self.column)
    }
}

/// Turns byte offsets into lines and columns.
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    source: &'a str,
    /// Byte offset where each line starts; the first is 0.
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(source: &'a str) -> LineIndex<'a> {
        let newlines = source.match_indices('\n').map(|(offset, _)| offset + 1);
        LineIndex { source, line_starts: std::iter::once(0).chain(newlines).collect() }
    }

    /// The location of a byte offset; offsets past the end or inside a character are clamped back.
    pub(crate) fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let column = self.source[self.line_starts[line]..offset].chars().count() + 1;
        Location { line: line + 1, column }
    }
}

/// Collects diagnostics for one file, so every problem is reported, not only the first.
#[derive(Debug)]
pub(crate) struct Reporter<'a> {
    path: &'a str,
    lines: LineIndex<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(path: &'a str, source: &'a str) -> Reporter<'a> {
        Reporter { path, lines: LineIndex::new(source), diagnostics: Vec::new() }
    }

    pub(crate) fn location(&self, offset: usize) -> Location {
        self.lines.location(offset)
    }

    pub(crate) fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.push(offset, message.into(), None);
    }

    pub(crate) fn error_with_hint(&mut self, offset: usize, message: impl Into<String>, hint: impl Into<String>) {
        self.push(offset, message.into(), Some(hint.into()));
    }

    fn push(&mut self, offset: usize, message: String, hint: Option<String>) {
        let Location { line, column } = self.location(offset);
        self.diagnostics.push(Diagnostic { path: self.path.to_string(), line, column, message, hint });
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    /// The diagnostics in file order; problems found at one place keep the order they were found in.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics.sort_by_key(|diagnostic| (diagnostic.line, diagnostic.column));
        self.diagnostics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_count_lines_and_characters_from_one() {
        let index = LineIndex::new("ab\nçd = 1\n\nx");
        assert_eq!(index.location(0), Location { line: 1, column: 1 });
        assert_eq!(index.location(2), Location { line: 1, column: 3 });
        assert_eq!(index.location(3), Location { line: 2, column: 1 });
        // 'ç' takes two bytes but one column.
        assert_eq!(index.location(5), Location { line: 2, column: 2 });
        assert_eq!(index.location(4), Location { line: 2, column: 1 }, "inside a character: its start");
        assert_eq!(index.location(11), Location { line: 3, column: 1 });
        assert_eq!(index.location(12), Location { line: 4, column: 1 });
        assert_eq!(index.location(99), Location { line: 4, column: 2 }, "past the end: the end");
    }

    #[test]
    fn display_puts_the_hint_on_its_own_line() {
        let mut diagnostic =
            Diagnostic { path: "a.toml".into(), line: 3, column: 7, message: "unknown key 'stpes'".into(), hint: None };
        assert_eq!(diagnostic.to_string(), "a.toml:3:7: unknown key 'stpes'");
        diagnostic.hint = Some("did you mean 'steps'?".into());
        assert_eq!(diagnostic.to_string(), "a.toml:3:7: unknown key 'stpes'\n  hint: did you mean 'steps'?");
    }

    #[test]
    fn reporter_sorts_by_position() {
        let mut reporter = Reporter::new("w.toml", "a = 1\nb = 2\n");
        reporter.error(8, "second");
        reporter.error(0, "first");
        reporter.error(6, "also second line");
        let messages: Vec<String> = reporter.finish().into_iter().map(|d| d.to_string()).collect();
        assert_eq!(messages, ["w.toml:1:1: first", "w.toml:2:1: also second line", "w.toml:2:3: second"]);
    }
}
