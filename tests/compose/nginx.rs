//! `deploy/nginx.conf` read as a tree of directives: enough to find its listeners, upstreams,
//! the locations that pass to them, and a few limits.

/// One directive: `name args...;` or `name args... { children }`.
#[derive(Debug, Clone)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The child directives named `name`.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> + 'a {
        self.block.iter().flatten().filter(move |d| d.name == name)
    }

    /// The first argument of the first child named `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.block
            .iter()
            .flatten()
            .find(|d| d.name == name)
            .and_then(|d| d.args.first())
            .map(String::as_str)
    }
}

/// Splits `text` into words, `;`, `{` and `}`; drops comments; keeps quoted strings whole.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                flush(&mut word, &mut out);
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' => {
                let mut quoted = String::new();
                let mut closed = false;
                while let Some(q) = chars.next() {
                    if q == '\\' {
                        quoted.extend(chars.next());
                    } else if q == c {
                        closed = true;
                        break;
                    } else {
                        quoted.push(q);
                    }
                }
                if !closed {
                    return Err("an unclosed quote".into());
                }
                word.push_str(&quoted);
            }
            ';' | '{' | '}' => {
                flush(&mut word, &mut out);
                out.push(c.to_string());
            }
            c if c.is_whitespace() => flush(&mut word, &mut out),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out);
    Ok(out)
}

fn block(tokens: &[String], at: &mut usize, nested: bool) -> Result<Vec<Directive>, String> {
    let mut directives = Vec::new();
    let mut words: Vec<String> = Vec::new();
    while let Some(token) = tokens.get(*at) {
        *at += 1;
        match token.as_str() {
            ";" => {
                let mut it = std::mem::take(&mut words).into_iter();
                let name = it.next().ok_or("a lone `;`")?;
                directives.push(Directive {
                    name,
                    args: it.collect(),
                    block: None,
                });
            }
            "{" => {
                let mut it = std::mem::take(&mut words).into_iter();
                let name = it.next().ok_or("a `{` without a directive")?;
                let children = block(tokens, at, true)?;
                directives.push(Directive {
                    name,
                    args: it.collect(),
                    block: Some(children),
                });
            }
            "}" => {
                if !nested {
                    return Err("an unmatched `}`".into());
                }
                if !words.is_empty() {
                    return Err(format!("`{}` is not ended by `;`", words.join(" ")));
                }
                return Ok(directives);
            }
            word => words.push(word.to_owned()),
        }
    }
    if nested {
        return Err("a `{` is never closed".into());
    }
    if !words.is_empty() {
        return Err(format!("`{}` is not ended by `;`", words.join(" ")));
    }
    Ok(directives)
}

/// Parses the whole file into a root directive named `main`.
pub fn parse(text: &str) -> Result<Directive, String> {
    let tokens = tokens(text)?;
    let mut at = 0;
    Ok(Directive {
        name: "main".into(),
        args: Vec::new(),
        block: Some(block(&tokens, &mut at, false)?),
    })
}

/// nginx's size syntax (`128k`, `1m`, `0`) in bytes.
pub fn size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.chars().last()? {
        'k' => (&lower[..lower.len() - 1], 1024),
        'm' => (&lower[..lower.len() - 1], 1024 * 1024),
        'g' => (&lower[..lower.len() - 1], 1024 * 1024 * 1024),
        _ => (lower.as_str(), 1),
    };
    digits.parse::<u64>().ok().map(|n| n * unit)
}

/// nginx's time syntax (`500ms`, `4s`, `1m`, `1h`, a bare number of seconds) in milliseconds.
pub fn millis(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(n * factor)
}

/// The port of a `listen` directive's address (`80`, `0.0.0.0:80`, `[::]:80`).
pub fn listen_port(listen: &Directive) -> Option<u16> {
    let address = listen.args.first()?;
    address.rsplit(':').next()?.parse().ok()
}
