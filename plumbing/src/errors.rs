//! Errors as one line a log can carry.

/// `e` and each of its causes, joined with `: ` (as anyhow's `{:#}` prints
/// them), so a log line says why and not only what. A cause whose text is
/// already on the line is not repeated (hyper and reqwest errors often
/// embed their source's message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_on_the_line() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&e), "outer: inner");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("request failed: inner")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn a_cause_already_on_the_line_is_not_repeated() {
        let e = Repeating(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&e), "request failed: inner");
    }
}
