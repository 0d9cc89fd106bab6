//! The module's side of the JWTs (client `Model/Jwt/Signer.php`, `Verifier.php`):
//! it signs with the outbound subkey and verifies the ledger's tokens with the inbound
//! one, applying the twelve rules of contract §3.2 in the module's order.

use std::collections::HashMap;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{hkdf, hmac};
use serde_json::{Map, Value};

pub const OUTBOUND_INFO: &[u8] = b"byte8-magento-outbound-v1";
pub const INBOUND_INFO: &[u8] = b"byte8-magento-inbound-v1";

/// PHP `hash_hkdf('sha256', $apiKey, 32, $info, '')`.
pub fn subkey(api_key: &str, info: &[u8]) -> [u8; 32] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"").extract(api_key.as_bytes());
    let info = [info];
    let mut out = [0u8; 32];
    prk.expand(&info, Len32)
        .expect("32 bytes")
        .fill(&mut out)
        .expect("32 bytes");
    out
}

/// Signer.php: header `{"alg":"HS256","typ":"JWT"}`, claims in the module's order,
/// `nbf == iat`, `exp = iat + 60`, a fresh v4 `jti`.
pub fn sign_outbound(api_key: &str, tenant_id: &str, iat: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let jti = uuid::Uuid::new_v4().to_string();
    // Built by hand to keep PHP's key order and compact encoding.
    let claims = format!(
        r#"{{"iss":"magento","sub":{},"aud":"byte8-ledger","iat":{iat},"nbf":{iat},"exp":{},"jti":"{jti}"}}"#,
        Value::String(tenant_id.to_owned()),
        iat + 60
    );
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, &subkey(api_key, OUTBOUND_INFO));
    let sig = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Verifier.php's verdict: the reason is only logged module-side, never returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    NotByte8Token,
    Malformed,
    Header,
    Signature,
    IssuerAudience,
    Subject,
    TimeClaims,
    Jti,
    IssuedInFuture,
    NotYetValid,
    Expired,
    TtlTooLong,
    Replayed,
}

/// The module's replay cache (`jti` → expiry, unix seconds).
#[derive(Debug, Default)]
pub struct ReplayCache(HashMap<String, i64>);

fn decode_object(segment: &str) -> Option<Map<String, Value>> {
    // The module accepts padded and unpadded base64url.
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Applies contract §3.2 rules 1–12 at module time `now`.
pub fn verify_inbound(
    token: &str,
    api_key: &str,
    tenant_id: &str,
    now: i64,
    replay: &mut ReplayCache,
) -> Result<(), Rejection> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(Rejection::Malformed);
    }
    let (Some(header), Some(claims)) = (decode_object(parts[0]), decode_object(parts[1])) else {
        return Err(Rejection::Malformed);
    };
    // JwtUserContext routes only tokens that look like ours to this verifier.
    if claims.get("iss").and_then(Value::as_str) != Some("byte8-ledger")
        || claims.get("aud").and_then(Value::as_str) != Some("magento")
    {
        return Err(Rejection::NotByte8Token);
    }
    if header.get("alg").and_then(Value::as_str) != Some("HS256")
        || header.get("typ").and_then(Value::as_str) != Some("JWT")
    {
        return Err(Rejection::Header);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2].trim_end_matches('='))
        .map_err(|_| Rejection::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &subkey(api_key, INBOUND_INFO));
    hmac::verify(&key, format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .map_err(|_| Rejection::Signature)?;
    if claims.get("sub").and_then(Value::as_str) != Some(tenant_id) {
        return Err(Rejection::Subject);
    }
    // Integers only: 1.7e9 or 1777464672.0 are refused.
    let int = |name: &str| {
        claims
            .get(name)
            .filter(|v| v.is_i64() || v.is_u64())
            .and_then(Value::as_i64)
    };
    let (Some(iat), Some(nbf), Some(exp)) = (int("iat"), int("nbf"), int("exp")) else {
        return Err(Rejection::TimeClaims);
    };
    let jti = match claims.get("jti").and_then(Value::as_str) {
        Some(j) if !j.is_empty() => j.to_owned(),
        _ => return Err(Rejection::Jti),
    };
    if iat > now + 30 {
        return Err(Rejection::IssuedInFuture);
    }
    if nbf > now {
        return Err(Rejection::NotYetValid);
    }
    if exp <= now {
        return Err(Rejection::Expired);
    }
    if exp - iat > 300 {
        return Err(Rejection::TtlTooLong);
    }
    replay.0.retain(|_, expiry| *expiry > now);
    if replay.0.contains_key(&jti) {
        return Err(Rejection::Replayed);
    }
    replay.0.insert(jti, now + (exp - now).max(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_vectors() {
        assert_eq!(
            hex::encode(subkey("byte8_lk_raw_secret", OUTBOUND_INFO)),
            "7d9da2d0582fd50518b2439628a4099d76728839d045b54dbb964e930c2fc872"
        );
        assert_eq!(
            hex::encode(subkey("byte8_lk_x", INBOUND_INFO)),
            "5baad96e04932ad31d69423b5c353eb5b707a7bf3d477de47c942802a7c96471"
        );
        // Vector C verifies at its iat, once.
        let c = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJieXRlOC1sZWRnZXIiLCJzdWIiOiJ0ZW5hbnQtMTIzIiwiYXVkIjoibWFnZW50byIsImlhdCI6MTc3NzQ2NDY3MiwibmJmIjoxNzc3NDY0NjcyLCJleHAiOjE3Nzc0NjQ5NzIsImp0aSI6IjdkMGUzYjUyLTljNDEtNGY3YS04ZTI2LTFiM2M1ZDdmOWEwMiJ9.11OXf5G1eYh6VcHWDu4mwcg9sUh8h834r79WASmuvZw";
        let mut cache = ReplayCache::default();
        assert_eq!(
            verify_inbound(c, "byte8_lk_raw_secret", "tenant-123", 1_777_464_672, &mut cache),
            Ok(())
        );
        assert_eq!(
            verify_inbound(c, "byte8_lk_raw_secret", "tenant-123", 1_777_464_673, &mut cache),
            Err(Rejection::Replayed)
        );
        assert_eq!(
            verify_inbound(
                c,
                "byte8_lk_raw_secret",
                "tenant-9",
                1_777_464_672,
                &mut ReplayCache::default()
            ),
            Err(Rejection::Subject)
        );
        assert_eq!(
            verify_inbound(
                c,
                "byte8_lk_raw_secret",
                "tenant-123",
                1_777_464_671,
                &mut ReplayCache::default()
            ),
            Err(Rejection::NotYetValid)
        );
        assert_eq!(
            verify_inbound(
                c,
                "byte8_lk_raw_secret",
                "tenant-123",
                1_777_464_972,
                &mut ReplayCache::default()
            ),
            Err(Rejection::Expired)
        );
        assert_eq!(
            verify_inbound(
                c,
                "byte8_lk_x",
                "tenant-123",
                1_777_464_672,
                &mut ReplayCache::default()
            ),
            Err(Rejection::Signature)
        );
    }

    #[test]
    fn outbound_tokens_match_signer_shape() {
        let token = sign_outbound("byte8_lk_raw_secret", "tenant-123", 1_777_464_672);
        assert!(token.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
        let claims = decode_object(token.split('.').nth(1).unwrap()).unwrap();
        let keys: Vec<&str> = claims.keys().map(String::as_str).collect();
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);
        assert_eq!(claims["nbf"], claims["iat"]);
        assert!(keys.contains(&"jti"));
    }
}
