//! The human output of the local commands: aligned columns and `label: value` listings.
//! Plain text, no colours, no terminal width guessing; cells are never cut.

use std::fmt::Write as _;

/// A table with a header row, printed with every column as wide as its widest cell and two
/// spaces between columns. The last column is not padded.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub(crate) fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|title| (*title).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending with a newline.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|title| width(title)).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                widths[column] = widths[column].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(
                        line,
                        "{cell}{:pad$}  ",
                        "",
                        pad = widths[column] - width(cell)
                    );
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label: value` lines with the values aligned, in the given order.
pub(crate) fn fields(pairs: &[(&str, String)]) -> String {
    let label_width = pairs
        .iter()
        .map(|(label, _)| width(label) + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in pairs {
        let label = format!("{label}:");
        let _ = writeln!(out, "{label:<label_width$}  {value}");
    }
    out
}

/// Display width of a cell: its number of characters (good enough for the ASCII and
/// Latin text keylife prints; names given by users may be wider in a terminal).
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut table = Table::new(&["ID", "NAME", "STATUS"]);
        table.row(vec!["1".into(), "payments".into(), "enabled".into()]);
        table.row(vec!["22".into(), "é".into(), "disabled".into()]);
        assert_eq!(
            table.render(),
            "ID  NAME      STATUS\n1   payments  enabled\n22  é         disabled\n"
        );
    }

    #[test]
    fn fields_align_values() {
        assert_eq!(
            fields(&[("id", "x".into()), ("status", "enabled".into())]),
            "id:      x\nstatus:  enabled\n"
        );
    }
}
