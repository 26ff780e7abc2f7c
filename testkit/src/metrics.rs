//! Reading a Prometheus `/metrics` endpoint from tests and benchmarks.

use std::io::{Read, Write};

/// The body of `GET /metrics` at `address` (`host:port`), over plain
/// HTTP/1.0; empty if nothing answers (the caller's checks say why).
pub fn scrape(address: &str) -> String {
    let mut body = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(address) {
        let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n");
        let _ = stream.read_to_string(&mut body);
    }
    body
}

/// The sum of the samples whose name is `name`, over all their labels; or,
/// when `name` ends with a label set (`x{kind="exec"}`), of that sample.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| match line.strip_prefix(name) {
            Some(rest) if name.ends_with('}') => rest.starts_with(' '),
            Some(rest) => rest.starts_with(' ') || rest.starts_with('{'),
            None => false,
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_family_or_reads_one_sample() {
        let text =
            "# HELP x_total X\nx_total{kind=\"a\"} 2\nx_total{kind=\"b\"} 3\nx_totals 9\ny 1.5\n";
        assert_eq!(sample(text, "x_total"), 5.0);
        assert_eq!(sample(text, "x_total{kind=\"b\"}"), 3.0);
        assert_eq!(sample(text, "y"), 1.5);
        assert_eq!(sample(text, "z"), 0.0);
    }
}
