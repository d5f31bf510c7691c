//! Keys, signatures, the platform certificate and the AES-256-GCM resource encryption.

use std::str::FromStr;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::Rng;
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::der::EncodePem;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;

/// One signing identity of the provider: a key and the id that goes in `Wechatpay-Serial`.
pub(crate) struct Identity {
    pub key: SigningKey<Sha256>,
    pub serial: String,
}

impl Identity {
    pub fn sign(&self, message: &str) -> String {
        let sig: Signature = self.key.sign(message.as_bytes());
        B64.encode(sig.to_bytes())
    }
}

pub(crate) fn random_key() -> anyhow::Result<RsaPrivateKey> {
    Ok(RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?)
}

pub(crate) fn public_pem(key: &RsaPrivateKey) -> anyhow::Result<String> {
    Ok(RsaPublicKey::from(key).to_public_key_pem(LineEnding::LF)?)
}

/// The "WeChat Pay public key" identity: `PUB_KEY_ID_` followed by digits.
pub(crate) fn public_key_identity(key: RsaPrivateKey) -> Identity {
    let mut rng = rand::thread_rng();
    let digits: String = (0..26)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    Identity {
        key: SigningKey::<Sha256>::new(key),
        serial: format!("PUB_KEY_ID_0114{digits}"),
    }
}

/// A self-signed platform certificate; returns the identity (serial in upper-case hex) and its PEM.
pub(crate) fn certificate_identity(key: RsaPrivateKey) -> anyhow::Result<(Identity, String)> {
    let signer = SigningKey::<Sha256>::new(key.clone());
    let mut serial_bytes = [0u8; 20];
    rand::thread_rng().fill(&mut serial_bytes[..]);
    // Positive and without a leading zero byte, so the DER form keeps all 20 bytes.
    serial_bytes[0] = 0x10 | (serial_bytes[0] & 0x7f);
    let serial = SerialNumber::new(&serial_bytes)?;
    let subject =
        Name::from_str("CN=Tenpay.com Root CA,OU=Tenpay.com CA Center,O=Tenpay.com,C=CN")?;
    let spki = SubjectPublicKeyInfoOwned::from_key(RsaPublicKey::from(&key))?;
    let validity = Validity::from_now(Duration::from_secs(5 * 365 * 24 * 3600))?;
    let builder = CertificateBuilder::new(Profile::Root, serial, validity, subject, spki, &signer)?;
    let cert = builder.build::<Signature>()?;
    let pem = cert.to_pem(LineEnding::LF)?;
    let serial_hex = hex::encode_upper(cert.tbs_certificate.serial_number.as_bytes());
    Ok((
        Identity {
            key: signer,
            serial: serial_hex,
        },
        pem,
    ))
}

pub(crate) fn merchant_verifier(pem: &str) -> anyhow::Result<VerifyingKey<Sha256>> {
    let key = RsaPublicKey::from_public_key_pem(pem.trim())?;
    Ok(VerifyingKey::<Sha256>::new(key))
}

pub(crate) fn verify(key: &VerifyingKey<Sha256>, message: &str, signature_b64: &str) -> bool {
    let Ok(raw) = B64.decode(signature_b64) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    key.verify(message.as_bytes(), &sig).is_ok()
}

pub(crate) fn random_string(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// AEAD_AES_256_GCM as the notifications use it: base64(ciphertext || tag).
pub(crate) fn encrypt_resource(
    apiv3_key: &str,
    nonce: &str,
    aad: &str,
    plaintext: &str,
) -> anyhow::Result<String> {
    let cipher = Aes256Gcm::new_from_slice(apiv3_key.as_bytes())
        .map_err(|_| anyhow::anyhow!("the APIv3 key must be 32 bytes"))?;
    let out = cipher
        .encrypt(
            Nonce::from_slice(nonce.as_bytes()),
            Payload {
                msg: plaintext.as_bytes(),
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("encryption failed"))?;
    Ok(B64.encode(out))
}
