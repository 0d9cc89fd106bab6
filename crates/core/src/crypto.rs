//! Envelope encryption of every secret at rest: AES-256-GCM (ring) under a master key
//! from configuration.
//!
//! A sealed value is `[1][key id length][key id][12-byte nonce][ciphertext + tag]`: it
//! names its key, so master keys rotate online (old keys stay readable while rows are
//! re-encrypted), and every seal takes a fresh random nonce. The additional
//! authenticated data names the row and the purpose, so a ciphertext copied into
//! another row or column does not decrypt.

use std::fmt;

use base64::Engine as _;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

use crate::Secret;

const FORMAT_V1: u8 = 1;
const MAX_KEY_ID_LEN: usize = 32;

/// The configured master keys; the first is active (used to seal), the rest only open.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    rng: SystemRandom,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish_non_exhaustive()
    }
}

/// Why a sealed value did not open. Never includes key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value needs master key `{0}`, which is not configured in LEDGER_MASTER_KEYS")]
    UnknownKey(String),
    #[error("the sealed value does not authenticate (wrong key, wrong row, or tampered)")]
    Unauthentic,
}

impl Keyring {
    /// Parses `id:base64,id:base64` (32-byte keys, standard or URL-safe base64).
    /// Errors never echo key material.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        for (index, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let Some((id, material)) = entry.split_once(':') else {
                return Err(format!("entry {} is not `id:base64key`", index + 1));
            };
            let id = id.trim();
            if id.is_empty()
                || id.len() > MAX_KEY_ID_LEN
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "entry {}: key id must be 1-{MAX_KEY_ID_LEN} letters, digits, - or _",
                    index + 1
                ));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("key id `{id}` appears twice"));
            }
            let material = material.trim();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(material)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(material))
                .map_err(|_| format!("key `{id}` is not valid base64"))?;
            if bytes.len() != 32 {
                return Err(format!("key `{id}` must decode to 32 bytes, not {}", bytes.len()));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("key `{id}` is unusable"))?;
            keys.push((id.to_owned(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err("no keys given; expected `id:base64key[,id:base64key...]`".to_owned());
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key in the `LEDGER_MASTER_KEYS` format (for `ledger dev` and tests).
    pub fn generate_spec(id: &str) -> Secret<String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).expect("the system RNG works");
        Secret::new(format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    pub fn active_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Encrypts under the active key; `context` becomes the authenticated data.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system RNG works");
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + plaintext.len() + 16);
        out.push(FORMAT_V1);
        out.push(u8::try_from(id.len()).expect("key ids are short"));
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut body,
        )
        .expect("sealing cannot fail for in-memory buffers");
        out.extend_from_slice(&body);
        out
    }

    /// Decrypts a value sealed with `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Secret<Vec<u8>>, CryptoError> {
        let (id, rest) = split_key_id(sealed)?;
        let key = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        if rest.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut body)
            .map_err(|_| CryptoError::Unauthentic)?;
        Ok(Secret::new(plain.to_vec()))
    }

    /// Opens a value that holds UTF-8 text.
    pub fn open_string(&self, sealed: &[u8], context: &str) -> Result<Secret<String>, CryptoError> {
        let bytes = self.open(sealed, context)?.into_inner();
        String::from_utf8(bytes)
            .map(Secret::new)
            .map_err(|_| CryptoError::Malformed)
    }
}

/// The key id a sealed value was made with.
pub fn key_id_of(sealed: &[u8]) -> Result<&str, CryptoError> {
    split_key_id(sealed).map(|(id, _)| id)
}

fn split_key_id(sealed: &[u8]) -> Result<(&str, &[u8]), CryptoError> {
    match sealed {
        [FORMAT_V1, len, rest @ ..] if usize::from(*len) <= rest.len() && *len > 0 => {
            let (id, rest) = rest.split_at(usize::from(*len));
            std::str::from_utf8(id)
                .map(|id| (id, rest))
                .map_err(|_| CryptoError::Malformed)
        }
        _ => Err(CryptoError::Malformed),
    }
}

/// Fills `n` random bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new().fill(&mut bytes).expect("the system RNG works");
    bytes
}

/// 256 random bits as URL-safe base64 (cookie values, nonces).
pub fn random_token() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(spec: &str) -> Keyring {
        Keyring::parse(spec).unwrap()
    }

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHh8aGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ=";

    #[test]
    fn seal_and_open_round_trip_with_fresh_nonces() {
        let keys = ring_of(K1);
        let a = keys.seal(b"byte8_lk_secret", "connector_bindings.api_key:1");
        let b = keys.seal(b"byte8_lk_secret", "connector_bindings.api_key:1");
        assert_ne!(a, b, "every seal uses a new nonce");
        assert_eq!(
            keys.open(&a, "connector_bindings.api_key:1").unwrap().expose(),
            b"byte8_lk_secret"
        );
        assert_eq!(key_id_of(&a).unwrap(), "k1");
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_does_not_open() {
        let keys = ring_of(K1);
        let sealed = keys.seal(b"token", "sage_tokens.refresh:row-1");
        assert_eq!(
            keys.open(&sealed, "sage_tokens.refresh:row-2").unwrap_err(),
            CryptoError::Unauthentic
        );
        assert_eq!(
            keys.open(&sealed, "sage_tokens.access:row-1").unwrap_err(),
            CryptoError::Unauthentic
        );
    }

    #[test]
    fn rotation_keeps_old_keys_readable() {
        let old = ring_of(K1).seal(b"x", "ctx");
        let rotated = ring_of(&format!("{K2},{K1}"));
        assert_eq!(rotated.active_id(), "k2");
        assert_eq!(rotated.open(&old, "ctx").unwrap().expose(), b"x");
        assert_eq!(key_id_of(&rotated.seal(b"x", "ctx")).unwrap(), "k2");
        assert_eq!(
            ring_of(K2).open(&old, "ctx").unwrap_err(),
            CryptoError::UnknownKey("k1".into())
        );
    }

    #[test]
    fn tampering_is_detected() {
        let keys = ring_of(K1);
        let mut sealed = keys.seal(b"secret", "ctx");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(keys.open(&sealed, "ctx").unwrap_err(), CryptoError::Unauthentic);
        assert_eq!(keys.open(&[9, 9, 9], "ctx").unwrap_err(), CryptoError::Malformed);
    }

    #[test]
    fn malformed_specs_are_refused_without_echoing_keys() {
        for bad in [
            "",
            "k1",
            "k1:notbase64!!",
            "k1:AAAA",
            &format!("{K1},{K1}"),
            "bad id:AAAA",
        ] {
            let err = Keyring::parse(bad).unwrap_err();
            assert!(!err.contains("AAECAwQF"), "{err}");
        }
        assert!(Keyring::parse(Keyring::generate_spec("dev").expose()).is_ok());
    }
}
