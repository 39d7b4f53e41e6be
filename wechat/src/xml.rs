//! The one XML reader behind every parser of this crate: a single pass over
//! `<xml>…</xml>` that hands each leaf element to a callback by dotted path.
//!
//! Security rules live here, so every parser gets them: no DOCTYPE, no
//! `<!ENTITY` or other markup declarations, no processing instructions except
//! a leading XML declaration, only the five predefined entities and numeric
//! character references, size, depth and element-count limits.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::{BytesRef, Event};

use crate::message::{Limits, ParseError};

/// One leaf element (an element without child elements), as seen by the callback.
pub(crate) struct Leaf<'p> {
    /// Dotted path below the root, with `[n]` on the n-th repetition of a
    /// name among its siblings (`SendPicsInfo.PicList.item[1].PicMd5Sum`).
    pub path: &'p str,
    /// True when the element is a direct child of the root `<xml>`.
    pub top_level: bool,
    /// The element's text: CDATA and plain text concatenated, entities
    /// resolved. Whitespace-only text next to CDATA sections is dropped.
    pub value: &'p str,
}

/// Per open element: where its segment starts in the path buffer, whether
/// it has child elements, and how often each child name was seen so far.
#[derive(Default)]
struct Frame {
    path_len: usize,
    has_children: bool,
    /// The distinct child names seen so far, back to back (one allocation, not one per name).
    names: String,
    /// Per distinct child name: its range in `names` and how often it came.
    child_names: Vec<(usize, usize, u32)>,
}

impl Frame {
    /// Counts one more child called `name` and returns how many came before.
    fn count_child(&mut self, name: &str) -> u32 {
        self.has_children = true;
        for (start, end, count) in &mut self.child_names {
            if self.names.get(*start..*end) == Some(name) {
                let before = *count;
                *count = count.saturating_add(1);
                return before;
            }
        }
        if self.child_names.capacity() == 0 {
            // A callback's root has a dozen children with short names.
            self.names.reserve(192);
            self.child_names.reserve(16);
        }
        let start = self.names.len();
        self.names.push_str(name);
        self.child_names.push((start, self.names.len(), 1));
        0
    }

    fn reset(&mut self, path_len: usize) {
        self.path_len = path_len;
        self.has_children = false;
        self.names.clear();
        self.child_names.clear();
    }
}

/// Text of the innermost open element, with enough bookkeeping to drop the
/// whitespace-only text pieces around CDATA (`<A>\n  <![CDATA[x]]>\n</A>` is `x`).
#[derive(Default)]
struct TextAcc {
    buf: String,
    has_cdata: bool,
    whitespace_runs: Vec<(usize, usize)>,
}

impl TextAcc {
    fn clear(&mut self) {
        self.buf.clear();
        self.has_cdata = false;
        self.whitespace_runs.clear();
    }

    fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if text.bytes().all(is_xml_whitespace) {
            let start = self.buf.len();
            self.buf.push_str(text);
            self.whitespace_runs.push((start, self.buf.len()));
        } else {
            self.buf.push_str(text);
        }
    }

    /// A resolved entity or character reference: kept even when it is a
    /// space, since the author escaped it on purpose.
    fn push_reference(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    fn push_cdata(&mut self, text: &str) {
        self.has_cdata = true;
        self.buf.push_str(text);
    }

    fn value(&self) -> Cow<'_, str> {
        if !self.has_cdata || self.whitespace_runs.is_empty() {
            return Cow::Borrowed(&self.buf);
        }
        let mut out = String::with_capacity(self.buf.len());
        let mut from = 0;
        for &(start, end) in &self.whitespace_runs {
            out.push_str(self.buf.get(from..start).unwrap_or_default());
            from = end;
        }
        out.push_str(self.buf.get(from..).unwrap_or_default());
        Cow::Owned(out)
    }
}

fn is_xml_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Where the reader is relative to the root element.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Phase {
    Prolog,
    Root,
    Epilog,
}

/// Walks `xml` and calls `on_leaf` for every leaf element below the root.
///
/// Errors: [`ParseError::TooLarge`] before anything is read, then
/// [`ParseError::BadUtf8`], [`ParseError::NotXmlRoot`], [`ParseError::Doctype`],
/// [`ParseError::TooDeep`], [`ParseError::TooManyElements`] or
/// [`ParseError::Malformed`]; errors returned by `on_leaf` stop the walk.
pub(crate) fn walk(
    xml: &[u8],
    limits: &Limits,
    on_leaf: impl FnMut(Leaf<'_>) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    if xml.len() > limits.max_bytes {
        return Err(ParseError::TooLarge);
    }
    let text = std::str::from_utf8(xml).map_err(|_| ParseError::BadUtf8)?;
    walk_str(text, limits, on_leaf)
}

/// [`walk`] for text already known to be UTF-8 (a decrypted message, a body the caller
/// validated): the same checks but the UTF-8 one.
pub(crate) fn walk_str(
    text: &str,
    limits: &Limits,
    mut on_leaf: impl FnMut(Leaf<'_>) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    if text.len() > limits.max_bytes {
        return Err(ParseError::TooLarge);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.trim_text(false);

    let mut state = WalkState {
        limits,
        elements: 0,
        frames: Vec::with_capacity(limits.max_depth.min(16)),
        depth: 0,
        path: String::with_capacity(64),
        acc: TextAcc {
            // Sized for a callback's longest usual value, so it rarely grows.
            buf: String::with_capacity(256),
            has_cdata: false,
            whitespace_runs: Vec::with_capacity(4),
        },
    };
    let mut phase = Phase::Prolog;
    let mut first_event = true;

    loop {
        let event = reader.read_event().map_err(map_xml_error)?;
        let is_first = std::mem::replace(&mut first_event, false);
        match event {
            Event::Start(start) => {
                if phase == Phase::Root {
                    state.open_child(start.name().as_ref())?;
                } else {
                    state.open_root(phase, start.name().as_ref())?;
                    phase = Phase::Root;
                }
            }
            Event::Empty(start) => {
                if phase == Phase::Root {
                    state.open_child(start.name().as_ref())?;
                    state.close_element(&mut on_leaf)?;
                } else {
                    // `<xml/>`: a root without children, nothing to report.
                    state.open_root(phase, start.name().as_ref())?;
                    state.pop_frame();
                    phase = Phase::Epilog;
                }
            }
            Event::End(_) => {
                if phase != Phase::Root {
                    return Err(ParseError::Malformed("unexpected end tag".into()));
                }
                if state.depth == 1 {
                    state.pop_frame();
                    phase = Phase::Epilog;
                } else {
                    state.close_element(&mut on_leaf)?;
                }
            }
            Event::Text(t) => {
                if phase == Phase::Root {
                    state.acc.push_text(&t);
                } else if !t.bytes().all(is_xml_whitespace) {
                    return Err(ParseError::Malformed(
                        "text outside the root element".into(),
                    ));
                }
            }
            Event::CData(c) => {
                if phase != Phase::Root {
                    return Err(ParseError::Malformed(
                        "text outside the root element".into(),
                    ));
                }
                state.acc.push_cdata(&c);
            }
            Event::GeneralRef(r) => {
                if phase != Phase::Root {
                    return Err(ParseError::Malformed(
                        "text outside the root element".into(),
                    ));
                }
                let mut utf8 = [0u8; 4];
                state.acc.push_reference(resolve_reference(&r, &mut utf8)?);
            }
            Event::Comment(_) => {}
            Event::Decl(_) => {
                if !is_first {
                    return Err(ParseError::Malformed("misplaced xml declaration".into()));
                }
            }
            Event::PI(_) | Event::DocType(_) => return Err(ParseError::Doctype),
            Event::Eof => {
                return match phase {
                    Phase::Epilog => Ok(()),
                    Phase::Prolog => Err(ParseError::Malformed("no root element".into())),
                    Phase::Root => Err(ParseError::Malformed("unexpected end of document".into())),
                };
            }
        }
    }
}

/// The walker's working state, kept apart from the event loop for clarity.
struct WalkState<'l> {
    limits: &'l Limits,
    elements: usize,
    /// Open elements, root first. Popped frames stay allocated for reuse.
    frames: Vec<Frame>,
    depth: usize,
    path: String,
    acc: TextAcc,
}

impl WalkState<'_> {
    fn count_element(&mut self) -> Result<(), ParseError> {
        self.elements = self.elements.saturating_add(1);
        if self.elements > self.limits.max_elements {
            return Err(ParseError::TooManyElements);
        }
        Ok(())
    }

    fn push_frame(&mut self, path_len: usize) -> Result<(), ParseError> {
        if self.depth >= self.limits.max_depth {
            return Err(ParseError::TooDeep);
        }
        match self.frames.get_mut(self.depth) {
            Some(frame) => frame.reset(path_len),
            None => self.frames.push(Frame {
                path_len,
                ..Frame::default()
            }),
        }
        self.depth += 1;
        self.acc.clear();
        Ok(())
    }

    fn pop_frame(&mut self) {
        self.depth = self.depth.saturating_sub(1);
        self.acc.clear();
    }

    fn open_root(&mut self, phase: Phase, name: &str) -> Result<(), ParseError> {
        if phase == Phase::Epilog {
            return Err(ParseError::Malformed(
                "content after the root element".into(),
            ));
        }
        self.count_element()?;
        if name != "xml" {
            return Err(ParseError::NotXmlRoot);
        }
        self.push_frame(0)
    }

    fn open_child(&mut self, name: &str) -> Result<(), ParseError> {
        self.count_element()?;
        let parent = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.frames.get_mut(i))
            .ok_or_else(|| ParseError::Malformed("element outside the root".into()))?;
        let repetition = parent.count_child(name);
        let path_len = self.path.len();
        if self.depth > 1 {
            self.path.push('.');
        }
        self.path.push_str(name);
        if repetition > 0 {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(self.path, "[{repetition}]");
        }
        self.push_frame(path_len)
    }

    /// Closes the innermost element below the root, reporting it if it is a leaf.
    fn close_element(
        &mut self,
        on_leaf: &mut impl FnMut(Leaf<'_>) -> Result<(), ParseError>,
    ) -> Result<(), ParseError> {
        let frame = self
            .depth
            .checked_sub(1)
            .and_then(|i| self.frames.get(i))
            .ok_or_else(|| ParseError::Malformed("unexpected end tag".into()))?;
        let path_len = frame.path_len;
        if !frame.has_children {
            let value = self.acc.value();
            on_leaf(Leaf {
                path: &self.path,
                top_level: self.depth == 2,
                value: &value,
            })?;
        }
        self.path.truncate(path_len);
        self.pop_frame();
        Ok(())
    }
}

/// Resolves `&name;`: the five predefined entities and character references
/// to characters allowed in XML 1.0. Anything else is refused.
fn resolve_reference<'b>(
    reference: &BytesRef<'_>,
    utf8: &'b mut [u8; 4],
) -> Result<&'b str, ParseError> {
    let predefined = match &**reference {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    };
    let c = match predefined {
        Some(c) => c,
        None => match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => c,
            Ok(Some(_)) | Err(_) => {
                return Err(ParseError::Malformed("invalid character reference".into()));
            }
            Ok(None) => return Err(ParseError::Malformed("undefined entity reference".into())),
        },
    };
    Ok(c.encode_utf8(utf8))
}

/// Characters allowed in an XML 1.0 document (the `Char` production).
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn map_xml_error(error: XmlError) -> ParseError {
    match error {
        // `<!` followed by anything but `--`, `[CDATA[` or `DOCTYPE`: a markup
        // declaration such as `<!ENTITY`, refused like a DOCTYPE.
        XmlError::Syntax(SyntaxError::InvalidBangMarkup | SyntaxError::UnclosedDoctype) => {
            ParseError::Doctype
        }
        XmlError::Syntax(_) => ParseError::Malformed("xml syntax error".into()),
        XmlError::IllFormed(_) => ParseError::Malformed("ill-formed xml".into()),
        XmlError::Escape(_) => ParseError::Malformed("invalid character reference".into()),
        _ => ParseError::Malformed("unreadable xml".into()),
    }
}

/// `text` without the characters XML 1.0 forbids (C0 controls other than
/// TAB, LF and CR, U+FFFE, U+FFFF); borrowed when there are none.
pub(crate) fn strip_illegal(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_xml_char) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().filter(|c| is_xml_char(*c)).collect())
    }
}

/// Appends `text` as one or more CDATA sections: forbidden characters are
/// removed, and every `]]>` is split as `]]]]><![CDATA[>` (docs/protocol.md §4.5).
pub(crate) fn push_cdata(out: &mut String, text: &str) {
    let text = strip_illegal(text);
    out.push_str("<![CDATA[");
    let mut parts = text.split("]]>");
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for part in parts {
        out.push_str("]]]]><![CDATA[>");
        out.push_str(part);
    }
    out.push_str("]]>");
}

/// Appends `text` as escaped character data (`&amp;`, `&lt;`, `&gt;`),
/// forbidden characters removed.
pub(crate) fn push_escaped(out: &mut String, text: &str) {
    for c in text.chars().filter(|c| is_xml_char(*c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}
