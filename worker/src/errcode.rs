//! WeChat API outcomes by class (DESIGN.md §6, protocol §13).

/// What the worker does with a WeChat answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// errcode 0: mark sent, ack.
    Ok,
    /// 40001, 40014, 42001: invalidate the token, refresh, retry once at once.
    TokenInvalid,
    /// -1 (busy), 45009 (daily quota), 45011 (minute quota), 45066 (too fast), 61450
    /// (customer-service system error): retry later through the retry queues.
    Transient,
    /// Everything else (40003, 45015, 45047, 48001, unknown codes, …): dead at once.
    Permanent,
}

/// The class of `errcode` on a non-token API call.
pub fn classify(errcode: i64) -> Class {
    match errcode {
        0 => Class::Ok,
        40001 | 40014 | 42001 => Class::TokenInvalid,
        -1 | 45009 | 45011 | 45066 | 61450 => Class::Transient,
        _ => Class::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_design_6() {
        for (code, class) in [
            (0, Class::Ok),
            (40001, Class::TokenInvalid),
            (40014, Class::TokenInvalid),
            (42001, Class::TokenInvalid),
            (-1, Class::Transient),
            (45009, Class::Transient),
            (45011, Class::Transient),
            (40003, Class::Permanent),
            (45015, Class::Permanent),
            (45047, Class::Permanent),
            (48001, Class::Permanent),
            (40013, Class::Permanent),
            (40125, Class::Permanent),
            (40164, Class::Permanent),
            (43004, Class::Permanent),
            (99999, Class::Permanent),
        ] {
            assert_eq!(classify(code), class, "{code}");
        }
    }
}
