//! PROTOCOL.md's numbering holds together: its sections are numbered in order, and
//! every "section N" or "section N.M" it refers to is one of its headings (other
//! documents' sections, such as "RFC 9000 section 3.2", are left alone).

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

/// The numbers of the `## N.` and `### N.M` headings, in document order.
fn headings() -> Vec<String> {
    let mut numbers = Vec::new();
    let mut in_code = false;
    for line in PROTOCOL_MD.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        let rest = if let Some(rest) = line.strip_prefix("### ") {
            rest
        } else if let Some(rest) = line.strip_prefix("## ") {
            rest
        } else {
            continue;
        };
        let number = rest.split(' ').next().unwrap_or_default();
        let number = number.trim_end_matches('.');
        if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            numbers.push(number.to_owned());
        }
    }
    numbers
}

/// Every section number the text refers to: "section 8.7", "sections 8.4 and 9.3",
/// "sections 7, 8 and 9", with the word before the list for context.
fn references() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let text = PROTOCOL_MD;
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("section") {
        let start = from + at;
        from = start + "section".len();
        // Another document's section: "RFC 8446 section 7.5", "Noise spec section 11".
        let before = text[..start].trim_end();
        let word_before = before.rsplit(char::is_whitespace).next().unwrap_or("");
        let two_before = before
            .rsplit(char::is_whitespace)
            .nth(1)
            .unwrap_or("")
            .to_ascii_lowercase();
        if two_before.ends_with("rfc") || word_before.eq_ignore_ascii_case("spec") {
            continue;
        }
        let mut rest = &text[from..];
        rest = rest.strip_prefix('s').unwrap_or(rest);
        // A list of numbers joined by ", ", " and ", " or ".
        while let Some(after_space) = rest.strip_prefix(' ') {
            let len = after_space
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(after_space.len());
            let number = after_space[..len].trim_end_matches('.');
            if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
                break;
            }
            found.push((
                number.to_owned(),
                text[start..start + 40.min(text.len() - start)].to_owned(),
            ));
            rest = &after_space[len..];
            if let Some(next) = rest
                .strip_prefix(",")
                .or_else(|| rest.strip_prefix(" and"))
                .or_else(|| rest.strip_prefix(" or"))
            {
                rest = next;
            } else {
                break;
            }
        }
    }
    found
}

#[test]
fn sections_are_numbered_in_order() {
    let mut expected_top = 0;
    let mut expected_sub = 0;
    for number in headings() {
        match number.split_once('.') {
            None => {
                expected_top += 1;
                expected_sub = 0;
                assert_eq!(number, expected_top.to_string(), "top-level heading");
            }
            Some((top, sub)) => {
                expected_sub += 1;
                assert_eq!(top, expected_top.to_string(), "{number} under its section");
                assert_eq!(
                    sub,
                    expected_sub.to_string(),
                    "{number} after {top}.{}",
                    expected_sub - 1
                );
            }
        }
    }
    assert_eq!(expected_top, 19, "the nineteen sections of the contents");
}

#[test]
fn every_section_reference_names_a_heading() {
    let headings = headings();
    let references = references();
    assert!(
        references.len() > 50,
        "the references were found: {references:?}"
    );
    let missing: Vec<_> = references
        .iter()
        .filter(|(number, _)| !headings.contains(number))
        .collect();
    assert!(missing.is_empty(), "references to no heading: {missing:?}");
}

#[test]
fn the_contents_list_every_section() {
    for number in headings().iter().filter(|n| !n.contains('.')) {
        let entry = format!("{number}. [");
        assert!(
            PROTOCOL_MD.contains(&entry),
            "section {number} is in the contents"
        );
    }
}
