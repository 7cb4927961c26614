//! `PROTOCOL.md`'s code tables (section 7.3 for control-message error codes, section
//! 11 for QUIC close and stream codes) list exactly the codes of the crate's tables:
//! the same numbers with the same names, in the same order, none missing, none extra.
//! The crate is the one source of truth; this keeps the document from drifting.

use blindrelay_protocol::{CloseCode, ErrorCode, StreamCode};

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

/// The text from the heading that starts with `start` to the next heading that
/// starts with `end`.
fn section(start: &str, end: &str) -> &'static str {
    let from = PROTOCOL_MD
        .find(&format!("\n{start}"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has a heading {start:?}"));
    let rest = &PROTOCOL_MD[from + 1..];
    let to = rest
        .find(&format!("\n{end}"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has a heading {end:?} after {start:?}"));
    &rest[..to]
}

/// The cells of a table row, trimmed.
fn cells(line: &str) -> Vec<&str> {
    let line = line.trim().trim_start_matches('|').trim_end_matches('|');
    line.split('|').map(str::trim).collect()
}

/// Every table in `text` whose header's first cell is `Code`, as (number, name) rows.
fn code_tables(text: &str) -> Vec<Vec<(u32, String)>> {
    let mut tables = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with('|') || cells(line).first() != Some(&"Code") {
            continue;
        }
        let mut rows = Vec::new();
        for row in lines.by_ref() {
            if !row.starts_with('|') {
                break;
            }
            let cells = cells(row);
            if cells[0].starts_with("--") {
                continue;
            }
            let number = cells[0].trim_matches('`');
            let number = match number.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => number.parse(),
            }
            .unwrap_or_else(|_| panic!("a code number in {row:?}"));
            let name = cells[1].trim_matches('`').to_owned();
            rows.push((number, name));
        }
        tables.push(rows);
    }
    tables
}

fn close_codes() -> Vec<(u32, String)> {
    CloseCode::ALL
        .iter()
        .map(|code| (code.to_u32(), code.name().expect("a known code").to_owned()))
        .collect()
}

fn stream_codes() -> Vec<(u32, String)> {
    StreamCode::ALL
        .iter()
        .map(|code| (code.to_u32(), code.name().expect("a known code").to_owned()))
        .collect()
}

#[test]
fn section_7_3_lists_exactly_the_error_codes() {
    let tables = code_tables(section("### 7.3", "### 7.4"));
    assert_eq!(tables.len(), 1, "one code table in section 7.3");
    let expected: Vec<(u32, String)> = ErrorCode::ALL
        .iter()
        .map(|code| {
            let name = code.name().expect("a known code").to_owned();
            (u32::from(code.to_u16()), name)
        })
        .collect();
    assert_eq!(tables[0], expected);
}

#[test]
fn section_11_lists_exactly_the_close_and_stream_codes() {
    let tables = code_tables(section("## 11.", "## 12."));
    assert_eq!(tables.len(), 2, "a close code and a stream code table");
    assert_eq!(tables[0], close_codes());
    assert_eq!(tables[1], stream_codes());
}

/// The reason-phrase table names its codes; each must be a close code.
#[test]
fn section_11_reason_phrases_name_close_codes() {
    let text = section("## 11.", "## 12.");
    let names: Vec<String> = close_codes().into_iter().map(|(_, name)| name).collect();
    let mut rows = 0;
    for line in text.lines().filter(|line| line.starts_with('|')) {
        let cells = cells(line);
        if !matches!(cells[0], "relay" | "host" | "player") {
            continue;
        }
        let code = cells[1].trim_matches('`');
        assert!(names.iter().any(|name| name == code), "{code} in {line:?}");
        rows += 1;
    }
    assert!(rows >= 5, "the reason-phrase table was found ({rows} rows)");
}

/// The tests above would pass on a document with no tables at all if the parser
/// found nothing; a changed number in the document must be caught.
#[test]
fn a_wrong_number_in_the_document_is_caught() {
    let doctored = section("## 11.", "## 12.").replace("| 3    | `IDLE`", "| 6    | `IDLE`");
    let tables = code_tables(&doctored);
    assert_ne!(tables[0], close_codes());
}
