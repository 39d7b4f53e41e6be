//! `application/x-www-form-urlencoded` query strings, both ways, and path segments.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What a path segment percent-encodes: everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Splits and decodes a query string (`+` is a space, `%XX` a byte);
/// invalid escapes are kept as written, invalid UTF-8 is replaced.
pub(crate) fn parse(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// Builds `k=v&k=v`, form-encoded (a space is `+`).
pub(crate) fn build(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// `text` as one path segment: a `/`, `?` or space in it stays inside the segment.
pub(crate) fn path_segment(text: &str) -> String {
    utf8_percent_encode(text, PATH_SEGMENT).to_string()
}

/// The value of the first parameter `name` in decoded `pairs`.
pub(crate) fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_form_encoding() {
        assert_eq!(
            parse("a=1&ticket=gQ%2Bx%2F%3D%3D&b=x+y&c&d=%zz&&e=%FF"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("ticket".to_owned(), "gQ+x/==".to_owned()),
                ("b".to_owned(), "x y".to_owned()),
                ("c".to_owned(), String::new()),
                ("d".to_owned(), "%zz".to_owned()),
                ("e".to_owned(), "\u{fffd}".to_owned()),
            ]
        );
        assert_eq!(find(&parse("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(find(&parse("a=1"), "b"), None);
    }

    #[test]
    fn encode_round_trips() {
        for text in ["gQH47+/==", "hello world", "你好", "a&b=c", "100%"] {
            let pairs = parse(&build(&[("k", text)]));
            assert_eq!(pairs, vec![("k".to_owned(), text.to_owned())]);
        }
    }

    #[test]
    fn path_segments_keep_unreserved_characters_only() {
        assert_eq!(path_segment("demo-1_a.b~"), "demo-1_a.b~");
        assert_eq!(path_segment("a/b?c d+é"), "a%2Fb%3Fc%20d%2B%C3%A9");
    }
}
