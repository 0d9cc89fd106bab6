//! HKDF subkeys and HS256 JWTs exactly as the module computes them (contract §2, §3).
//!
//! Hand-written over ring rather than a JWT library: the module fixes the header bytes
//! and the claim order, and the ledger must refuse anything but HS256 with integer time
//! claims. Both are simplest to guarantee with the primitives in plain sight.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ledger_core::Secret;
use ring::{hkdf, hmac};
use serde::Serialize;
use serde_json::{Map, Value};

/// Info string of the key Magento signs with (ledger verifies).
pub const OUTBOUND_INFO: &[u8] = b"byte8-magento-outbound-v1";
/// Info string of the key the ledger signs with (Magento verifies).
pub const INBOUND_INFO: &[u8] = b"byte8-magento-inbound-v1";
/// `{"alg":"HS256","typ":"JWT"}`, the only header either side produces.
pub const HEADER_SEGMENT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
/// The module's hard ceiling on `exp - iat`.
pub const MAX_TTL_SECS: i64 = 300;
/// Lifetime of the tokens the ledger mints (the module's ceiling).
pub const LEDGER_TOKEN_TTL_SECS: i64 = 300;
/// How far in the past the ledger puts `iat`: the module refuses an `iat` more than 30 s
/// ahead of its clock and any `nbf` ahead of it, so a store up to 90 s behind (and,
/// with the 300 s lifetime, up to 240 s ahead) accepts the ledger's tokens without
/// knowing its skew. A store known to be further behind gets tokens dated by its clock.
pub const LEDGER_IAT_BACKDATE_SECS: i64 = 60;
/// How far before `iat` the ledger puts `nbf` (the module allows no leeway on `nbf`).
pub const LEDGER_NBF_BACKDATE_SECS: i64 = 30;

/// RFC 5869 HKDF-SHA256.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk
        .expand(&info, Len(len))
        .expect("HKDF output length is at most 255 * 32");
    let mut out = vec![0u8; len];
    okm.fill(&mut out).expect("the buffer has the requested length");
    out
}

/// The pair of 32-byte HMAC keys derived from a binding's api_key.
#[derive(Debug, Clone)]
pub struct Subkeys {
    /// Verifies what the store sends (webhooks, tile, status, disconnect).
    pub outbound: Secret<[u8; 32]>,
    /// Signs what the ledger sends to the store.
    pub inbound: Secret<[u8; 32]>,
}

impl Subkeys {
    /// Empty salt, the api_key string's bytes as IKM (contract §2).
    pub fn derive(api_key: &str) -> Self {
        let derive = |info| {
            let okm = hkdf_sha256(&[], api_key.as_bytes(), info, 32);
            let mut key = [0u8; 32];
            key.copy_from_slice(&okm);
            Secret::new(key)
        };
        Self {
            outbound: derive(OUTBOUND_INFO),
            inbound: derive(INBOUND_INFO),
        }
    }
}

/// Claims in the module's order (`iss, sub, aud, iat, nbf, exp, jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Signs `claims` with HS256 under `key`, with the fixed header segment.
pub fn sign(key: &[u8], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{HEADER_SEGMENT}.{payload}");
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// A token for one ledger → Magento request: `iss` byte8-ledger, `aud` magento,
/// `iat` 60 s before `now`, `nbf` 30 s before that, `exp` at the module's 300 s ceiling
/// from `iat`, fresh v4 `jti`. `now` is the store's clock as far as the ledger knows it.
pub fn mint_inbound(subkeys: &Subkeys, tenant_id: &str, now: i64) -> Secret<String> {
    let iat = now - LEDGER_IAT_BACKDATE_SECS;
    let claims = Claims {
        iss: "byte8-ledger".to_owned(),
        sub: tenant_id.to_owned(),
        aud: "magento".to_owned(),
        iat,
        nbf: iat - LEDGER_NBF_BACKDATE_SECS,
        exp: iat + LEDGER_TOKEN_TTL_SECS,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    Secret::new(sign(subkeys.inbound.expose(), &claims))
}

/// Why a token was refused. `code()` is stable and goes into problem bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a compact JWS with three base64url segments holding JSON objects")]
    Malformed,
    #[error("the token's algorithm `{0}` is not accepted; only HS256 is")]
    Algorithm(String),
    #[error("the token's header lists critical extensions (`crit`), which the ledger does not implement")]
    Critical,
    #[error("the token's signature does not verify with this binding's key")]
    Signature,
    #[error("claim `{0}` is missing or has the wrong type")]
    Claim(&'static str),
    #[error("`iss` is `{0}`, expected `magento`")]
    Issuer(String),
    #[error("`aud` must be the string `byte8-ledger`")]
    Audience,
    #[error("`sub` is `{0}`, which is not this tenant")]
    Subject(String),
    #[error("the token expired {0} s ago")]
    Expired(i64),
    #[error("the token is not valid for another {0} s (is the store's clock ahead?)")]
    NotYetValid(i64),
    #[error("the token lives {0} s; at most 300 s is accepted")]
    TtlTooLong(i64),
    #[error("the token id (jti) was already used")]
    Replayed,
}

impl JwtError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "token_malformed",
            Self::Algorithm(_) => "token_algorithm_refused",
            Self::Critical => "token_crit_refused",
            Self::Signature => "token_signature_invalid",
            Self::Claim(_) => "token_claim_invalid",
            Self::Issuer(_) => "token_wrong_issuer",
            Self::Audience => "token_wrong_audience",
            Self::Subject(_) => "token_wrong_subject",
            Self::Expired(_) => "token_expired",
            Self::NotYetValid(_) => "token_not_yet_valid",
            Self::TtlTooLong(_) => "token_ttl_too_long",
            Self::Replayed => "token_replayed",
        }
    }
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    signing_input: &'a str,
    signature: Vec<u8>,
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
}

/// Splits and decodes; refuses any header whose `alg` is not HS256 (including `none`).
pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let decode_object = |segment: &str| -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(segment.trim_end_matches('='))
            .map_err(|_| JwtError::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(JwtError::Malformed),
        }
    };
    let header = decode_object(h)?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(JwtError::Algorithm(alg.clone())),
        _ => return Err(JwtError::Algorithm("(missing)".to_owned())),
    }
    if header.get("typ").is_some_and(|t| t != "JWT") {
        return Err(JwtError::Malformed);
    }
    // RFC 7515 §4.1.11: extensions marked critical that are not understood must be refused.
    if header.contains_key("crit") {
        return Err(JwtError::Critical);
    }
    let claims = decode_object(p)?;
    let signature = URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)?;
    Ok(Parsed {
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        header,
        claims,
    })
}

impl Parsed<'_> {
    /// Constant-time HMAC-SHA256 check under `key`.
    pub fn verify_signature(&self, key: &[u8]) -> bool {
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, key),
            self.signing_input.as_bytes(),
            &self.signature,
        )
        .is_ok()
    }

    /// The unverified `sub`, for finding whose key to try.
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }
}

/// Checks a Magento → ledger token's claims (after its signature verified): issuer,
/// audience, subject, integer time claims, TTL ceiling, and `jti` present. `leeway`
/// tolerates clock skew in either direction. Returns the typed claims.
pub fn check_outbound_claims(
    claims: &Map<String, Value>,
    tenant_id: &str,
    now: i64,
    leeway: i64,
) -> Result<Claims, JwtError> {
    let string = |name: &'static str| claims.get(name).and_then(Value::as_str).ok_or(JwtError::Claim(name));
    let integer = |name: &'static str| claims.get(name).and_then(Value::as_i64).ok_or(JwtError::Claim(name));
    let iss = string("iss")?;
    if iss != "magento" {
        return Err(JwtError::Issuer(iss.to_owned()));
    }
    if claims.get("aud").and_then(Value::as_str) != Some("byte8-ledger") {
        return Err(JwtError::Audience);
    }
    let sub = string("sub")?;
    if sub != tenant_id {
        return Err(JwtError::Subject(sub.to_owned()));
    }
    let (iat, nbf, exp) = (integer("iat")?, integer("nbf")?, integer("exp")?);
    let jti = string("jti")?;
    if jti.is_empty() || jti.len() > 128 {
        return Err(JwtError::Claim("jti"));
    }
    if exp - iat > MAX_TTL_SECS {
        return Err(JwtError::TtlTooLong(exp - iat));
    }
    if now >= exp + leeway {
        return Err(JwtError::Expired(now - exp));
    }
    let earliest = nbf.max(iat);
    if earliest > now + leeway {
        return Err(JwtError::NotYetValid(earliest - now));
    }
    Ok(Claims {
        iss: iss.to_owned(),
        sub: sub.to_owned(),
        aud: "byte8-ledger".to_owned(),
        iat,
        nbf,
        exp,
        jti: jti.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc5869_test_vectors() {
        // Test case 1.
        let okm = hkdf_sha256(
            &unhex("000102030405060708090a0b0c"),
            &[0x0b; 22],
            &unhex("f0f1f2f3f4f5f6f7f8f9"),
            42,
        );
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        // Test case 2 (long inputs).
        let ikm: Vec<u8> = (0x00..=0x4f).collect();
        let salt: Vec<u8> = (0x60..=0xaf).collect();
        let info: Vec<u8> = (0xb0..=0xff).collect();
        assert_eq!(
            hex::encode(hkdf_sha256(&salt, &ikm, &info, 82)),
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09\
             da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"
        );
        // Test case 3: empty salt and info, the shape the module uses.
        assert_eq!(
            hex::encode(hkdf_sha256(&[], &[0x0b; 22], &[], 42)),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn contract_subkey_vectors() {
        let k = Subkeys::derive("byte8_lk_raw_secret");
        assert_eq!(
            hex::encode(k.outbound.expose()),
            "7d9da2d0582fd50518b2439628a4099d76728839d045b54dbb964e930c2fc872"
        );
        assert_eq!(
            hex::encode(k.inbound.expose()),
            "d17842b7e7dd30e2bd0c52048b18745582596de1aae88d501d6b0adde3fc4021"
        );
        let k = Subkeys::derive("byte8_lk_x");
        assert_eq!(
            hex::encode(k.outbound.expose()),
            "9aab4d8ad7a7a5cd808bd673badfe85412ef5cb75559429db2ebb04a82b032c0"
        );
        assert_eq!(
            hex::encode(k.inbound.expose()),
            "5baad96e04932ad31d69423b5c353eb5b707a7bf3d477de47c942802a7c96471"
        );
    }

    const IAT: i64 = 1_777_464_672;

    fn outbound(sub: &str, jti: &str) -> Claims {
        Claims {
            iss: "magento".into(),
            sub: sub.into(),
            aud: "byte8-ledger".into(),
            iat: IAT,
            nbf: IAT,
            exp: IAT + 60,
            jti: jti.into(),
        }
    }

    #[test]
    fn contract_jwt_vector_a() {
        let token = sign(b"fake-derived-32byte-subkey-aaaaa", &outbound("tenant-42", "abc-jti"));
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJtYWdlbnRvIiwic3ViIjoidGVuYW50LTQyIiwiYXVkIjoiYnl0ZTgtbGVkZ2VyIiwiaWF0IjoxNzc3NDY0NjcyLCJuYmYiOjE3Nzc0NjQ2NzIsImV4cCI6MTc3NzQ2NDczMiwianRpIjoiYWJjLWp0aSJ9.tEK8HKqAMl9kc2BSQvw1SpXV6vpmFYPP5HIH3Zm5KWY"
        );
    }

    #[test]
    fn contract_jwt_vector_b_verifies() {
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJtYWdlbnRvIiwic3ViIjoidGVuYW50LTEyMyIsImF1ZCI6ImJ5dGU4LWxlZGdlciIsImlhdCI6MTc3NzQ2NDY3MiwibmJmIjoxNzc3NDY0NjcyLCJleHAiOjE3Nzc0NjQ3MzIsImp0aSI6IjNmMWMyYTllLTRiN2QtNGMxZS05YTJmLTBkNWU2YjdjOGE5MSJ9.FQHDCRM3SWEuFxl97JuhRq3uvws5xU0dh8cBIazHVlQ";
        let keys = Subkeys::derive("byte8_lk_raw_secret");
        let parsed = parse(token).unwrap();
        assert!(parsed.verify_signature(keys.outbound.expose()));
        assert!(!parsed.verify_signature(keys.inbound.expose()), "direction matters");
        let claims = check_outbound_claims(&parsed.claims, "tenant-123", IAT + 5, 30).unwrap();
        assert_eq!(claims.jti, "3f1c2a9e-4b7d-4c1e-9a2f-0d5e6b7c8a91");
        assert_eq!(
            sign(keys.outbound.expose(), &claims),
            token,
            "re-signing reproduces the bytes"
        );
    }

    #[test]
    fn contract_jwt_vector_c() {
        let keys = Subkeys::derive("byte8_lk_raw_secret");
        let claims = Claims {
            iss: "byte8-ledger".into(),
            sub: "tenant-123".into(),
            aud: "magento".into(),
            iat: IAT,
            nbf: IAT,
            exp: IAT + 300,
            jti: "7d0e3b52-9c41-4f7a-8e26-1b3c5d7f9a02".into(),
        };
        assert_eq!(
            sign(keys.inbound.expose(), &claims),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJieXRlOC1sZWRnZXIiLCJzdWIiOiJ0ZW5hbnQtMTIzIiwiYXVkIjoibWFnZW50byIsImlhdCI6MTc3NzQ2NDY3MiwibmJmIjoxNzc3NDY0NjcyLCJleHAiOjE3Nzc0NjQ5NzIsImp0aSI6IjdkMGUzYjUyLTljNDEtNGY3YS04ZTI2LTFiM2M1ZDdmOWEwMiJ9.11OXf5G1eYh6VcHWDu4mwcg9sUh8h834r79WASmuvZw"
        );
    }

    #[test]
    fn minted_inbound_tokens_meet_the_modules_rules() {
        let keys = Subkeys::derive("byte8_lk_x");
        let a = mint_inbound(&keys, "t-1", IAT);
        let b = mint_inbound(&keys, "t-1", IAT);
        let (pa, pb) = (parse(a.expose()).unwrap(), parse(b.expose()).unwrap());
        assert!(pa.verify_signature(keys.inbound.expose()));
        assert_ne!(pa.claims["jti"], pb.claims["jti"], "a fresh jti per request");
        let c = &pa.claims;
        assert_eq!(
            (c["iss"].as_str(), c["aud"].as_str(), c["sub"].as_str()),
            (Some("byte8-ledger"), Some("magento"), Some("t-1"))
        );
        assert!(c["iat"].is_i64() && c["nbf"].is_i64() && c["exp"].is_i64());
        assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 300);
        assert!(c["nbf"].as_i64().unwrap() < IAT);
    }

    #[test]
    fn refusals() {
        let key = b"fake-derived-32byte-subkey-aaaaa";
        let check = |token: &str, now: i64| -> Result<Claims, JwtError> {
            let parsed = parse(token)?;
            if !parsed.verify_signature(key) {
                return Err(JwtError::Signature);
            }
            check_outbound_claims(&parsed.claims, "tenant-42", now, 30)
        };
        let good = outbound("tenant-42", "j");
        assert!(check(&sign(key, &good), IAT).is_ok());
        // alg none and other algorithms.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            sign(key, &good).split('.').nth(1).unwrap()
        );
        assert_eq!(check(&none, IAT).unwrap_err(), JwtError::Algorithm("none".into()));
        let hs512 = sign(key, &good).replacen(
            HEADER_SEGMENT,
            &URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","typ":"JWT"}"#),
            1,
        );
        assert_eq!(check(&hs512, IAT).unwrap_err(), JwtError::Algorithm("HS512".into()));
        assert_eq!(
            check(&sign(b"another-key-of-32-bytes-xxxxxxxx", &good), IAT).unwrap_err(),
            JwtError::Signature
        );
        assert_eq!(
            check(
                &sign(
                    key,
                    &Claims {
                        iss: "byte8-ledger".into(),
                        ..good.clone()
                    }
                ),
                IAT
            )
            .unwrap_err()
            .code(),
            "token_wrong_issuer"
        );
        assert_eq!(
            check(
                &sign(
                    key,
                    &Claims {
                        aud: "magento".into(),
                        ..good.clone()
                    }
                ),
                IAT
            )
            .unwrap_err(),
            JwtError::Audience
        );
        assert_eq!(
            check(
                &sign(
                    key,
                    &Claims {
                        sub: "tenant-43".into(),
                        ..good.clone()
                    }
                ),
                IAT
            )
            .unwrap_err()
            .code(),
            "token_wrong_subject"
        );
        assert_eq!(
            check(&sign(key, &good), IAT + 60 + 30).unwrap_err().code(),
            "token_expired"
        );
        assert!(check(&sign(key, &good), IAT + 60 + 29).is_ok(), "within leeway");
        assert_eq!(
            check(&sign(key, &good), IAT - 31).unwrap_err().code(),
            "token_not_yet_valid"
        );
        assert_eq!(
            check(
                &sign(
                    key,
                    &Claims {
                        exp: IAT + 301,
                        ..good.clone()
                    }
                ),
                IAT
            )
            .unwrap_err()
            .code(),
            "token_ttl_too_long"
        );
        assert_eq!(
            check(
                &sign(
                    key,
                    &Claims {
                        jti: String::new(),
                        ..good.clone()
                    }
                ),
                IAT
            )
            .unwrap_err()
            .code(),
            "token_claim_invalid"
        );
        assert_eq!(check("a.b", IAT).unwrap_err(), JwtError::Malformed);
        // A float time claim is refused, like the module does.
        let mut claims = serde_json::to_value(&good).unwrap();
        claims["iat"] = serde_json::json!(1_777_464_672.0);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let input = format!("{HEADER_SEGMENT}.{payload}");
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes());
        let float_token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(check(&float_token, IAT).unwrap_err(), JwtError::Claim("iat"));
    }
}
