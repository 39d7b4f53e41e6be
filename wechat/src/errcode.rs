//! WeChat API `errcode`s by what a caller should do about them. The one list of transient
//! codes: the worker's sends and the shared token service both classify through it.
//!
//! Only the `errcode` of an answer is classified here; a network error, a timeout or an HTTP
//! 5xx never gets this far and is transient by the caller's own rule.

/// What to do with a WeChat API answer, by its `errcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `0`: the call succeeded.
    Ok,
    /// `40001`, `40014`, `42001`: the access token is invalid or expired. On an API call,
    /// refresh the token and retry once; from the token endpoint itself, `40001` means the
    /// AppSecret is wrong, which no retry fixes.
    TokenInvalid,
    /// `-1` (system busy), `45009` (daily quota), `45011` (minute quota), `45066` (calling
    /// too fast), `61450` (customer-service system error): may succeed later, retry with a
    /// delay.
    Transient,
    /// Everything else (`40003` bad openid, `45015` reply window closed, `45047` too many
    /// messages, `48001` not authorised, codes not known here, …): no retry will help.
    Permanent,
}

/// The class of `errcode`.
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

    fn check(codes: &[i64], expected: Class) {
        for &code in codes {
            assert_eq!(classify(code), expected, "errcode {code}");
        }
    }

    #[test]
    fn codes_fall_in_their_classes() {
        check(&[0], Class::Ok);
        check(&[40001, 40014, 42001], Class::TokenInvalid);
        check(&[-1, 45009, 45011, 45066, 61450], Class::Transient);
        check(
            &[
                40003, 45015, 45047, 48001, 40013, 40125, 40164, 43004, 1, -2, 99999,
            ],
            Class::Permanent,
        );
    }
}
