//! WXBizMsgCrypt message encryption (docs/protocol.md §2): the AES key, encrypting
//! and decrypting `Encrypt` values, and the encrypted reply envelope.
//!
//! AES-256-CBC with IV = key[..16], PKCS#7 padding to 32-byte blocks, the
//! plaintext `random(16) ‖ u32be(len) ‖ msg ‖ appid`, standard base64.

use aes::Aes256;
use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::generic_array::GenericArray;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

use crate::message::{Limits, ParseError};
use crate::signature::msg_signature;
use crate::xml;

/// The padding block size WeChat uses (not AES's 16).
const PAD_BLOCK: usize = 32;
/// `random` (16 bytes) and `msg_len` (4 bytes).
const HEADER_LEN: usize = 20;

/// Decodes the 43-character EncodingAESKey: no padding, and the two unused
/// low bits of the last character may be set (console keys usually have
/// them set; docs/protocol.md §2.1).
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// The 32-byte AES key of an account, decoded from its EncodingAESKey.
///
/// A secret: its `Debug` prints `AesKey([redacted])`.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

/// Why an EncodingAESKey was refused (sample-code error -40004 IllegalAesKey).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not exactly 43 characters (a 44-character key with `=` is refused too).
    #[error("encoding aes key must be exactly 43 characters")]
    WrongLength,
    /// A character outside `[A-Za-z0-9]`.
    #[error("encoding aes key must contain only A-Z, a-z and 0-9")]
    InvalidCharacter,
}

impl AesKey {
    /// Decodes the 43-character EncodingAESKey configured in the console.
    ///
    /// Requires exactly 43 characters of `[A-Za-z0-9]`; the trailing bits of
    /// the last character are ignored, as WeChat does.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<AesKey, KeyError> {
        if encoding_aes_key.len() != 43 {
            return Err(KeyError::WrongLength);
        }
        if !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyError::InvalidCharacter);
        }
        let mut key = [0u8; 32];
        // 43 characters carry 258 bits, so the decoded length is always 32;
        // an output buffer of 32 bytes is enough.
        let written = KEY_ENGINE
            .decode_slice(encoding_aes_key, &mut key)
            .map_err(|_| KeyError::InvalidCharacter)?;
        if written != key.len() {
            return Err(KeyError::WrongLength);
        }
        Ok(AesKey(key))
    }

    /// Wraps 32 raw key bytes. Arbitrary bytes have no 43-character
    /// `[A-Za-z0-9]` form a console would accept; to make a configurable
    /// key, generate 43 such characters and use
    /// [`AesKey::from_encoding_aes_key`].
    pub fn from_bytes(bytes: [u8; 32]) -> AesKey {
        AesKey(bytes)
    }

    /// The raw 32 key bytes. Secret: never log them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(self.0.get(..16).unwrap_or(&[0u8; 16]));
        iv
    }
}

/// Why an `Encrypt` value was refused, in the order the checks run.
///
/// Messages say which check failed and never include the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// `Encrypt` is the empty string.
    #[error("encrypt is empty")]
    Empty,
    /// Not canonical standard base64 with `=` padding (no whitespace, no
    /// URL-safe alphabet, no non-zero trailing bits).
    #[error("encrypt is not canonical base64")]
    BadBase64,
    /// The ciphertext is not a non-zero multiple of 32 bytes.
    #[error("ciphertext length is not a non-zero multiple of 32")]
    BadCiphertextLength,
    /// The pad byte is outside 1..=32 or the pad bytes differ (usually a
    /// wrong key).
    #[error("invalid padding")]
    BadPadding,
    /// Fewer than 20 bytes after unpadding, or `msg_len` runs past the end.
    #[error("message length field exceeds the buffer")]
    LengthOverflow,
    /// The bytes after the message are not exactly the expected AppID
    /// (another account, or a wrong key).
    #[error("message was sealed for a different app id")]
    AppIdMismatch,
    /// The message is not valid UTF-8 (only from [`decrypt_utf8`]).
    #[error("message is not valid utf-8")]
    BadUtf8,
}

/// Encrypts `msg` for `appid` into the base64 `Encrypt` value (docs/protocol.md §2.4).
///
/// `random` must come from the caller's RNG (16 fresh bytes per message);
/// with fixed bytes the output is deterministic, which the tests rely on.
/// `msg` must be shorter than 4 GiB (the length field is 32 bits).
pub fn encrypt(key: &AesKey, appid: &str, random: [u8; 16], msg: &[u8]) -> String {
    let unpadded = HEADER_LEN
        .saturating_add(msg.len())
        .saturating_add(appid.len());
    let pad = PAD_BLOCK - unpadded % PAD_BLOCK;
    let mut buf = Vec::with_capacity(unpadded.saturating_add(pad));
    buf.extend_from_slice(&random);
    let msg_len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&msg_len.to_be_bytes());
    buf.extend_from_slice(msg);
    buf.extend_from_slice(appid.as_bytes());
    // `pad` is in 1..=32, so it fits a byte.
    let pad_byte = u8::try_from(pad).unwrap_or(32);
    buf.resize(buf.len().saturating_add(pad), pad_byte);

    let mut cipher = cbc::Encryptor::<Aes256>::new(key.as_bytes().into(), &key.iv().into());
    // The buffer is a whole number of 32-byte blocks, so every chunk is a full
    // 16-byte AES block.
    for block in buf.chunks_exact_mut(16) {
        cipher.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    STANDARD.encode(&buf)
}

/// Decrypts an `Encrypt` value sealed for `appid` and returns the message bytes.
///
/// Checks, in order: empty, canonical padded standard base64, ciphertext a
/// non-zero multiple of 32 bytes, PKCS#7 padding (1..=32, all pad bytes
/// equal), header and `msg_len` within the buffer, AppID exactly equal.
/// Does not check `msg_signature`; verify it first
/// ([`crate::verify_msg_signature`]).
pub fn decrypt(key: &AesKey, appid: &str, encrypt: &str) -> Result<Vec<u8>, DecryptError> {
    if encrypt.is_empty() {
        return Err(DecryptError::Empty);
    }
    let mut buf = STANDARD
        .decode(encrypt)
        .map_err(|_| DecryptError::BadBase64)?;
    if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
        return Err(DecryptError::BadCiphertextLength);
    }
    let plain_len = cbc::Decryptor::<Aes256>::new(key.as_bytes().into(), &key.iv().into())
        .decrypt_padded_mut::<NoPadding>(&mut buf)
        .map_err(|_| DecryptError::BadCiphertextLength)?
        .len();
    buf.truncate(plain_len);

    let pad = usize::from(*buf.last().ok_or(DecryptError::BadCiphertextLength)?);
    if !(1..=PAD_BLOCK).contains(&pad) {
        return Err(DecryptError::BadPadding);
    }
    let content_len = buf.len().checked_sub(pad).ok_or(DecryptError::BadPadding)?;
    let pad_bytes = buf.get(content_len..).ok_or(DecryptError::BadPadding)?;
    if pad_bytes.iter().any(|&b| usize::from(b) != pad) {
        return Err(DecryptError::BadPadding);
    }
    buf.truncate(content_len);

    let len_field: [u8; 4] = buf
        .get(16..HEADER_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DecryptError::LengthOverflow)?;
    let msg_len =
        usize::try_from(u32::from_be_bytes(len_field)).map_err(|_| DecryptError::LengthOverflow)?;
    let msg_end = HEADER_LEN
        .checked_add(msg_len)
        .filter(|end| *end <= buf.len())
        .ok_or(DecryptError::LengthOverflow)?;
    if buf.get(msg_end..) != Some(appid.as_bytes()) {
        return Err(DecryptError::AppIdMismatch);
    }
    buf.truncate(msg_end);
    // `msg_end >= HEADER_LEN`, so the range is within the buffer.
    buf.drain(..HEADER_LEN);
    Ok(buf)
}

/// [`decrypt`], then requires the message to be UTF-8
/// ([`DecryptError::BadUtf8`] otherwise). Pushes and replies are UTF-8 XML.
pub fn decrypt_utf8(key: &AesKey, appid: &str, encrypt: &str) -> Result<String, DecryptError> {
    String::from_utf8(decrypt(key, appid, encrypt)?).map_err(|_| DecryptError::BadUtf8)
}

/// The values of an encrypted reply envelope (docs/protocol.md §2.7), as carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedReply {
    /// `Encrypt`: the base64 ciphertext.
    pub encrypt: String,
    /// `MsgSignature`: over token, `TimeStamp`, `Nonce` and `Encrypt`.
    pub msg_signature: String,
    /// `TimeStamp`.
    pub timestamp: String,
    /// `Nonce`.
    pub nonce: String,
}

/// Encrypts `reply_xml` and wraps it in the reply envelope of docs/protocol.md §2.7:
/// `<xml><Encrypt>…</Encrypt><MsgSignature>…</MsgSignature><TimeStamp>…</TimeStamp><Nonce>…</Nonce></xml>`.
///
/// `timestamp` and `nonce` are normally the push's own query values; any
/// text is carried safely, except characters XML 1.0 forbids, which are
/// removed before signing so the envelope always verifies. `random` comes
/// from the caller's RNG.
pub fn seal_reply(
    key: &AesKey,
    appid: &str,
    token: &str,
    random: [u8; 16],
    timestamp: &str,
    nonce: &str,
    reply_xml: &str,
) -> String {
    let encrypted = encrypt(key, appid, random, reply_xml.as_bytes());
    let timestamp = xml::strip_illegal(timestamp);
    let nonce = xml::strip_illegal(nonce);
    let signature = msg_signature(token, &timestamp, &nonce, &encrypted);
    let mut out = String::with_capacity(encrypted.len() + 200);
    out.push_str("<xml><Encrypt><![CDATA[");
    // Base64 and hex never contain `]]>`.
    out.push_str(&encrypted);
    out.push_str("]]></Encrypt><MsgSignature><![CDATA[");
    out.push_str(&signature);
    out.push_str("]]></MsgSignature><TimeStamp>");
    xml::push_escaped(&mut out, &timestamp);
    out.push_str("</TimeStamp><Nonce>");
    xml::push_cdata(&mut out, &nonce);
    out.push_str("</Nonce></xml>");
    out
}

/// Reads a reply envelope (docs/protocol.md §2.7); the simulator uses it to check
/// gateway answers. `Encrypt`, `MsgSignature`, `TimeStamp` and `Nonce` must
/// be present directly under `<xml>` (CDATA or plain text). Nothing is
/// verified: check the signature, then [`decrypt_utf8`] and
/// [`crate::parse_reply`].
pub fn parse_sealed_reply(xml: &[u8]) -> Result<SealedReply, ParseError> {
    let mut encrypt = None;
    let mut msg_signature = None;
    let mut timestamp = None;
    let mut nonce = None;
    xml::walk(xml, &Limits::default(), |leaf| {
        if leaf.top_level {
            let slot = match leaf.path {
                "Encrypt" => &mut encrypt,
                "MsgSignature" => &mut msg_signature,
                "TimeStamp" => &mut timestamp,
                "Nonce" => &mut nonce,
                _ => return Ok(()),
            };
            *slot = Some(leaf.value.to_owned());
        }
        Ok(())
    })?;
    Ok(SealedReply {
        encrypt: encrypt.ok_or(ParseError::Missing("Encrypt"))?,
        msg_signature: msg_signature.ok_or(ParseError::Missing("MsgSignature"))?,
        timestamp: timestamp.ok_or(ParseError::Missing("TimeStamp"))?,
        nonce: nonce.ok_or(ParseError::Missing("Nonce"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_envelope;
    use crate::signature::verify_msg_signature;
    use proptest::prelude::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../testdata/wechat-crypto.json")).unwrap()
    }

    fn group(name: &str) -> Vec<Value> {
        vectors()[name].as_array().unwrap().clone()
    }

    fn s<'v>(case: &'v Value, key: &str) -> &'v str {
        case[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {}", case["name"]))
    }

    fn random_of(case: &Value) -> [u8; 16] {
        hex::decode(s(case, "random_hex"))
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn key(encoding_aes_key: &str) -> AesKey {
        AesKey::from_encoding_aes_key(encoding_aes_key).unwrap()
    }

    const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const SAMPLE_APPID: &str = "wx2c2769f8efd9abc2";

    /// Checks one successful push: key derivation, signature, envelope, plaintext.
    fn check_decrypt_ok(case: &Value) {
        let name = s(case, "name");
        let key = key(s(case, "encoding_aes_key"));
        assert_eq!(
            hex::encode(key.as_bytes()),
            s(case, "aes_key_hex"),
            "{name}"
        );
        let encrypt = s(case, "encrypt");
        verify_msg_signature(
            s(case, "token"),
            s(case, "timestamp"),
            s(case, "nonce"),
            encrypt,
            s(case, "msg_signature"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let envelope = parse_envelope(s(case, "body_xml").as_bytes(), &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(envelope.encrypt.as_deref(), Some(encrypt), "{name}");
        let plain =
            decrypt(&key, s(case, "appid"), encrypt).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plain, s(case, "plaintext").as_bytes(), "{name}");
        if let Some(plain_hex) = case["plaintext_hex"].as_str() {
            assert_eq!(hex::encode(&plain), plain_hex, "{name}");
        }
        assert_eq!(
            plain.len() as u64,
            case["msg_len"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            decrypt_utf8(&key, s(case, "appid"), encrypt).unwrap(),
            s(case, "plaintext"),
            "{name}"
        );
        // Every XML message among the vectors parses.
        if plain.starts_with(b"<xml>") {
            let parsed =
                crate::parse(&plain, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!parsed.msg_type.is_empty(), "{name}");
        }
        if name == "we_whisper_video_reply" {
            // A reply, with two spaces before its MsgType CDATA.
            let reply = crate::parse_reply(&plain).unwrap().reply;
            assert_eq!(
                reply,
                crate::Reply::Video {
                    media_id: "eYJ1MbwPRJtOvIEabaxHs7TX2D-HV71s79GUxqdUkjm6Gs2Ed1KF3ulAOA9H1xG0"
                        .into(),
                    title: Some("testCallBackReplyVideo".into()),
                    description: Some("testCallBackReplyVideo".into()),
                }
            );
        }
        if name == "chinese_and_emoji_text" {
            let parsed = crate::parse(&plain, &Limits::default()).unwrap();
            assert_eq!(
                parsed.field("Content"),
                Some("你好，世界！👋🏻 表情😀测试\r\n第二行 — «quotes» & <b>")
            );
        }
        // Our own encryption with the same random reproduces the ciphertext.
        assert_eq!(
            encrypt_fn(&key, s(case, "appid"), random_of(case), &plain),
            encrypt,
            "{name}"
        );
    }

    use super::encrypt as encrypt_fn;

    #[test]
    fn decrypt_ok_vectors() {
        let cases = group("decrypt_ok");
        assert_eq!(cases.len(), 32);
        for case in &cases {
            if case["lenient"].as_bool() == Some(true) {
                // Decision: a 44-character key ending in `=` is refused. The
                // console only ever shows 43 characters; wechatpy's leniency
                // here comes from Python's base64 ignoring excess padding.
                assert_eq!(
                    AesKey::from_encoding_aes_key(s(case, "encoding_aes_key")).unwrap_err(),
                    KeyError::WrongLength
                );
                continue;
            }
            check_decrypt_ok(case);
        }
    }

    #[test]
    fn encrypt_fixed_random_vectors() {
        let cases = group("encrypt_fixed_random");
        assert_eq!(cases.len(), 9);
        for case in &cases {
            let key = key(s(case, "encoding_aes_key"));
            assert_eq!(hex::encode(key.as_bytes()), s(case, "aes_key_hex"));
            let sealed = encrypt_fn(
                &key,
                s(case, "appid"),
                random_of(case),
                s(case, "plaintext").as_bytes(),
            );
            assert_eq!(sealed, s(case, "expected_encrypt"), "{}", s(case, "name"));
        }
    }

    fn decrypt_error_kind(kind: &str) -> DecryptError {
        match kind {
            "empty" => DecryptError::Empty,
            "bad_base64" => DecryptError::BadBase64,
            "bad_ciphertext_length" => DecryptError::BadCiphertextLength,
            "bad_padding" => DecryptError::BadPadding,
            "length_overflow" => DecryptError::LengthOverflow,
            "appid_mismatch" => DecryptError::AppIdMismatch,
            "bad_utf8" => DecryptError::BadUtf8,
            other => panic!("unknown error kind {other}"),
        }
    }

    #[test]
    fn decrypt_error_vectors() {
        let cases = group("decrypt_error");
        assert_eq!(cases.len(), 34);
        for case in &cases {
            let name = s(case, "name");
            let kind = s(case, "error");
            let key = match AesKey::from_encoding_aes_key(s(case, "encoding_aes_key")) {
                Err(_) if kind == "bad_key" => continue,
                Err(e) => panic!("{name}: unexpected key error {e}"),
                Ok(_) if kind == "bad_key" => panic!("{name}: key accepted"),
                Ok(key) => key,
            };
            let encrypt = s(case, "encrypt");
            let signature = verify_msg_signature(
                s(case, "token"),
                s(case, "timestamp"),
                s(case, "nonce"),
                encrypt,
                s(case, "msg_signature"),
            );
            if kind == "signature_mismatch" {
                assert!(signature.is_err(), "{name}");
                continue;
            }
            assert_eq!(signature, Ok(()), "{name}");
            let envelope = parse_envelope(s(case, "body_xml").as_bytes(), &Limits::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(envelope.encrypt.as_deref(), Some(encrypt), "{name}");
            assert_eq!(
                decrypt_utf8(&key, s(case, "appid"), encrypt),
                Err(decrypt_error_kind(kind)),
                "{name}"
            );
            if kind != "bad_utf8" {
                assert_eq!(
                    decrypt(&key, s(case, "appid"), encrypt),
                    Err(decrypt_error_kind(kind)),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn reply_envelope_vectors() {
        let cases = group("reply_envelope");
        assert_eq!(cases.len(), 5);
        for case in &cases {
            let name = s(case, "name");
            let expected = parse_sealed_reply(s(case, "expected_envelope_xml").as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(expected.encrypt, s(case, "expected_encrypt"), "{name}");
            assert_eq!(
                expected.msg_signature,
                s(case, "expected_msg_signature"),
                "{name}"
            );
            assert_eq!(expected.timestamp, s(case, "timestamp"), "{name}");
            assert_eq!(expected.nonce, s(case, "nonce"), "{name}");

            let key = key(s(case, "encoding_aes_key"));
            let ours = seal_reply(
                &key,
                s(case, "appid"),
                s(case, "token"),
                random_of(case),
                s(case, "timestamp"),
                s(case, "nonce"),
                s(case, "reply_xml"),
            );
            let ours = parse_sealed_reply(ours.as_bytes()).unwrap();
            assert_eq!(ours, expected, "{name}");
            assert_eq!(
                decrypt_utf8(&key, s(case, "appid"), &ours.encrypt).unwrap(),
                s(case, "reply_xml"),
                "{name}"
            );
        }
    }

    #[test]
    fn protocol_vector_a() {
        let key = key(SAMPLE_KEY);
        assert_eq!(
            hex::encode(key.as_bytes()),
            "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
        );
        assert_eq!(hex::encode(key.iv()), "69b71d79f8218a39259a7a29aabb2dba");
        let encrypt = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
        assert_eq!(
            verify_msg_signature(
                "spamtest",
                "1409735669",
                "1320562132",
                encrypt,
                "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
            ),
            Ok(())
        );
        let msg = decrypt_utf8(&key, SAMPLE_APPID, encrypt).unwrap();
        assert_eq!(msg.len(), 280);
        assert_eq!(
            msg,
            "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
             <FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
             <CreateTime>1409735668</CreateTime>\n\
             <MsgType><![CDATA[text]]></MsgType>\n\
             <Content><![CDATA[abcdteT]]></Content>\n\
             <MsgId>6054768590064713728</MsgId>\n\
             </xml>"
        );
        let parsed = crate::parse(msg.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(parsed.msg_id, Some(6054768590064713728));
        assert_eq!(
            decrypt(&key, "wx0123456789abcdef", encrypt),
            Err(DecryptError::AppIdMismatch)
        );
    }

    #[test]
    fn protocol_vector_b() {
        let key = key(SAMPLE_KEY);
        let reply = "<xml><ToUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></ToUserName><FromUserName><![CDATA[gh_10f6c3c3ac5a]]></FromUserName><CreateTime>1409735669</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello, wxgate 2025]]></Content></xml>";
        assert_eq!(reply.len(), 251);
        // The same bytes come out of the reply renderer.
        assert_eq!(
            crate::render(
                &crate::Reply::Text {
                    content: "hello, wxgate 2025".into()
                },
                "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
                "gh_10f6c3c3ac5a",
                1409735669
            ),
            reply
        );
        let expected_encrypt = "QCTqNwyPmqRu4xuyqVsja/8DOMgJaz9jkiLnHvFU3NPJBm9DX5VH+I5snAd+4LaLG9xb92leyC2f7EA4IvGC9Ev2KP5coXCq+Re2DajYk48aK484q8k8CEwPZ1EXx1eFaTQD+sKfRMYccLZQdDIh7ZuBYmDy+SbcxTusIP77ewgmTMhRI12mAENowyVKeTzRmYwPWPauNYMjlb1k1f6PsjBsDutf1d9zlH66ZZg4MGaAp5pl1whXX0bA81jctWQd8g3BhI+/yYj1ghNgYRnZ4WcjbFqg+DdEwhEqFDJU4xhii610+z+r8E9AIbB5ONNHdsQKdzB/l+dFYO9f3OR9fEzqVuFB1jkKnYYHPd8/ZFi/yhUyG/aG9U2A2St5fJ37xq+y1x95L6EKgRvD/HNuSdG9ubmem/WzI9VZ/9XZzeQ=";
        let random = *b"1234567890123456";
        assert_eq!(
            encrypt_fn(&key, SAMPLE_APPID, random, reply.as_bytes()),
            expected_encrypt
        );
        let envelope = seal_reply(
            &key,
            SAMPLE_APPID,
            "spamtest",
            random,
            "1409735669",
            "1320562132",
            reply,
        );
        assert_eq!(
            envelope,
            format!(
                "<xml><Encrypt><![CDATA[{expected_encrypt}]]></Encrypt><MsgSignature><![CDATA[b3c4331c5eb926c7b8026c21726c016e7f175b64]]></MsgSignature><TimeStamp>1409735669</TimeStamp><Nonce><![CDATA[1320562132]]></Nonce></xml>"
            )
        );
    }

    #[test]
    fn key_rules() {
        let check = |input: &str, expected: Result<(), KeyError>| {
            assert_eq!(
                AesKey::from_encoding_aes_key(input).map(|_| ()),
                expected,
                "{input:?}"
            );
        };
        check(SAMPLE_KEY, Ok(()));
        check(&SAMPLE_KEY[..42], Err(KeyError::WrongLength));
        check(&format!("{SAMPLE_KEY}="), Err(KeyError::WrongLength));
        check("", Err(KeyError::WrongLength));
        check(
            &SAMPLE_KEY.replace('k', "+"),
            Err(KeyError::InvalidCharacter),
        );
        check(
            &SAMPLE_KEY.replace('k', "/"),
            Err(KeyError::InvalidCharacter),
        );
        // 43 bytes but not 43 ASCII characters.
        check(
            &format!("é{}", &SAMPLE_KEY[..41]),
            Err(KeyError::InvalidCharacter),
        );
        // The canonical form (trailing bits cleared, last character `E`) is the same key.
        let key = key(SAMPLE_KEY);
        assert_eq!(
            AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE")
                .unwrap()
                .as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            AesKey::from_bytes(*key.as_bytes()).as_bytes(),
            key.as_bytes()
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = key(SAMPLE_KEY);
        assert_eq!(format!("{key:?}"), "AesKey([redacted])");
        assert_eq!(
            format!("{:?}", Some(key.clone())),
            "Some(AesKey([redacted]))"
        );
    }

    #[test]
    fn seal_reply_keeps_odd_nonce_verifiable() {
        let key = key(SAMPLE_KEY);
        for (timestamp, nonce) in [
            ("1409735669", "a]]>b<c>&d"),
            ("1<2&3", "\u{1}x\u{7}"),
            ("", ""),
        ] {
            let envelope = seal_reply(
                &key,
                SAMPLE_APPID,
                "tok",
                [7; 16],
                timestamp,
                nonce,
                "<xml/>",
            );
            let sealed = parse_sealed_reply(envelope.as_bytes()).unwrap();
            assert_eq!(sealed.timestamp, xml::strip_illegal(timestamp));
            assert_eq!(sealed.nonce, xml::strip_illegal(nonce));
            assert_eq!(
                verify_msg_signature(
                    "tok",
                    &sealed.timestamp,
                    &sealed.nonce,
                    &sealed.encrypt,
                    &sealed.msg_signature
                ),
                Ok(())
            );
            assert_eq!(
                decrypt_utf8(&key, SAMPLE_APPID, &sealed.encrypt).unwrap(),
                "<xml/>"
            );
        }
    }

    #[test]
    fn parse_sealed_reply_requires_every_element() {
        let check = |xml: &str, missing: &'static str| {
            assert_eq!(
                parse_sealed_reply(xml.as_bytes()),
                Err(ParseError::Missing(missing))
            );
        };
        check(
            "<xml><MsgSignature>a</MsgSignature><TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>",
            "Encrypt",
        );
        check(
            "<xml><Encrypt>e</Encrypt><TimeStamp>1</TimeStamp><Nonce>n</Nonce></xml>",
            "MsgSignature",
        );
        check(
            "<xml><Encrypt>e</Encrypt><MsgSignature>a</MsgSignature><Nonce>n</Nonce></xml>",
            "TimeStamp",
        );
        check(
            "<xml><Encrypt>e</Encrypt><MsgSignature>a</MsgSignature><TimeStamp>1</TimeStamp></xml>",
            "Nonce",
        );
        assert_eq!(
            parse_sealed_reply(b"success"),
            Err(ParseError::Malformed(
                "text outside the root element".into()
            ))
        );
    }

    #[test]
    fn decrypt_checks_in_order() {
        let key = key(SAMPLE_KEY);
        assert_eq!(decrypt(&key, SAMPLE_APPID, ""), Err(DecryptError::Empty));
        assert_eq!(
            decrypt(&key, SAMPLE_APPID, "abc"),
            Err(DecryptError::BadBase64)
        );
        // 16 zero bytes: valid base64, not a multiple of 32.
        assert_eq!(
            decrypt(&key, SAMPLE_APPID, &STANDARD.encode([0u8; 16])),
            Err(DecryptError::BadCiphertextLength)
        );
        // Random 32 bytes decrypt to garbage: the padding check catches almost all.
        let sealed = encrypt_fn(&key, SAMPLE_APPID, [1; 16], b"hello");
        let other = AesKey::from_bytes([9; 32]);
        assert!(decrypt(&other, SAMPLE_APPID, &sealed).is_err());
    }

    proptest! {
        #[test]
        fn decrypt_inverts_encrypt(
            msg in proptest::collection::vec(any::<u8>(), 0..4096),
            appid in "[ -~]{1,40}",
            random in any::<[u8; 16]>(),
            key_bytes in any::<[u8; 32]>(),
        ) {
            let key = AesKey::from_bytes(key_bytes);
            let sealed = encrypt_fn(&key, &appid, random, &msg);
            prop_assert_eq!(decrypt(&key, &appid, &sealed).unwrap(), msg);
        }

        #[test]
        fn decrypt_never_panics(encrypt in ".{0,200}", appid in ".{0,20}") {
            let _ = decrypt(&AesKey::from_bytes([3; 32]), &appid, &encrypt);
        }

        #[test]
        fn decrypt_never_panics_on_ciphertexts(ct in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decrypt(&AesKey::from_bytes([3; 32]), "wx", &STANDARD.encode(ct));
        }

        #[test]
        fn key_decoding_never_panics(text in "[A-Za-z0-9+/=]{0,50}") {
            let _ = AesKey::from_encoding_aes_key(&text);
        }
    }
}
