//! Sprig's key and certificate functions: `genPrivateKey` ("rsa" 4096-bit, "ecdsa" P-256),
//! `genCA`, `genSelfSignedCert`, `genSignedCert` (RSA 2048-bit keys, SHA-256 signatures, the
//! extensions Go's `x509.CreateCertificate` writes for Sprig's templates) and
//! `buildCustomCert`. Keys, serial numbers and validity come from the render's seeded generator
//! and clock, so a render stays a function of its inputs; the agent passes a fresh seed per run.
//! A certificate is a dict with `Cert` and `Key` (PEM), as Sprig's struct has.

use std::collections::BTreeMap;

use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use sha1::Digest as _;

use super::encoding::go_b64_decode;
use super::{dict_arg, i, s, want, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("genPrivateKey", gen_private_key),
    ("genCA", gen_ca),
    ("genSelfSignedCert", gen_self_signed_cert),
    ("genSignedCert", gen_signed_cert),
    ("buildCustomCert", build_custom_cert),
];

/// Evaluation steps one 2048-bit RSA key costs (prime search is slow; 4096 bits cost four
/// times as much).
const RSA_STEPS: u64 = 100_000;
/// Evaluation steps one signature or EC key costs.
const SIGN_STEPS: u64 = 5_000;

/// The render's generator as a `rand_core` source for the key generators.
struct Seeded<'a>(&'a mut Ctx);

impl rand_core::RngCore for Seeded<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.below(1 << 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.fill(dest);
        Ok(())
    }
}

/// Seeded by design: the render's randomness is an input (see the module docs).
impl rand_core::CryptoRng for Seeded<'_> {}

/// Go's `pem.EncodeToMemory`.
fn pem(kind: &str, der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let mut out = format!("-----BEGIN {kind}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {kind}-----\n"));
    out
}

/// Go's `pem.Decode`: the first block's type and bytes.
fn pem_decode(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let kind_end = rest.find("-----")?;
    let kind = rest[..kind_end].to_string();
    let body_start = rest[kind_end + 5..].trim_start_matches(['\r', '\n']);
    let end = body_start.find(&format!("-----END {kind}-----"))?;
    let b64: String = body_start[..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = go_b64_decode(b64.as_bytes()).ok()?;
    Some((kind, der))
}

// ---- a minimal DER writer ----

fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut body = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut stack = vec![(a & 0x7f) as u8];
        let mut v = a >> 7;
        while v > 0 {
            stack.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        body.extend(stack.into_iter().rev());
    }
    tlv(0x06, &body)
}

/// A non-negative INTEGER from big-endian bytes.
fn uint(bytes: &[u8]) -> Vec<u8> {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let mut body = bytes[skip..].to_vec();
    if body.is_empty() || body[0] & 0x80 != 0 {
        body.insert(0, 0);
    }
    tlv(0x02, &body)
}

fn bit_string(unused: u8, bytes: &[u8]) -> Vec<u8> {
    let mut body = vec![unused];
    body.extend_from_slice(bytes);
    tlv(0x03, &body)
}

/// Go's `asn1` time: UTCTime for 1950–2049, GeneralizedTime otherwise.
fn der_time(secs: i64) -> Result<Vec<u8>, String> {
    let t = chrono::DateTime::from_timestamp(secs, 0).ok_or("certificate time out of range")?;
    let y = chrono::Datelike::year(&t);
    if (1950..2050).contains(&y) {
        Ok(tlv(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes()))
    } else if (0..=9999).contains(&y) {
        Ok(tlv(0x18, t.format("%Y%m%d%H%M%SZ").to_string().as_bytes()))
    } else {
        Err("certificate time out of range".into())
    }
}

/// A subject or issuer with only a common name (Go's `pkix.Name{CommonName: cn}`).
fn name(cn: &str) -> Vec<u8> {
    if cn.is_empty() {
        return seq(&[]);
    }
    let printable = cn
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b" '()+,-./:=?*&".contains(&c));
    let value = tlv(if printable { 0x13 } else { 0x0c }, cn.as_bytes());
    seq(&[tlv(0x31, &seq(&[oid(&[2, 5, 4, 3]), value]))])
}

fn extension(id: &[u64], critical: bool, value: Vec<u8>) -> Vec<u8> {
    let mut parts = vec![oid(id)];
    if critical {
        parts.push(tlv(0x01, &[0xff]));
    }
    parts.push(tlv(0x04, &value));
    seq(&parts)
}

/// Go's `net.ParseIP`, as the bytes x509 writes (4 for IPv4).
fn parse_ip(x: &str) -> Option<Vec<u8>> {
    match x.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(v4) => Some(v4.octets().to_vec()),
        std::net::IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        }),
    }
}

struct Template {
    cn: String,
    ips: Vec<Vec<u8>>,
    dns: Vec<String>,
    days: i64,
    is_ca: bool,
}

fn base_template(
    name: &str,
    cn: &Value,
    ips: &Value,
    dns: &Value,
    days: &Value,
) -> Result<Template, String> {
    let mut t = Template {
        cn: s(cn)?.to_string(),
        ips: Vec::new(),
        dns: Vec::new(),
        days: i(days)?,
        is_ca: false,
    };
    for ip in super::list_of(name, ips)? {
        match &ip {
            Value::Str(x) => t
                .ips
                .push(parse_ip(x).ok_or_else(|| format!("error parsing ip: {x}"))?),
            other => {
                return Err(format!(
                    "error parsing ip: {} is not a string",
                    other.go_string()
                ))
            }
        }
    }
    for d in super::list_of(name, dns)? {
        match &d {
            Value::Str(x) => t.dns.push(x.clone()),
            other => {
                return Err(format!(
                    "error processing alternate dns name: {} is not a string",
                    other.go_string()
                ))
            }
        }
    }
    Ok(t)
}

fn rsa_key(ctx: &mut Ctx, bits: usize) -> Result<rsa::RsaPrivateKey, String> {
    ctx.spend(
        "RSA key generation",
        RSA_STEPS * (bits as u64 / 2048).pow(2),
    )?;
    rsa::RsaPrivateKey::new(&mut Seeded(ctx), bits)
        .map_err(|e| format!("failed to generate private key: {e}"))
}

/// The DER of the subject Name inside a certificate (`None` when it does not parse).
fn cert_subject(der: &[u8]) -> Option<Vec<u8>> {
    /// (tag, whole element, contents) of the element at the start of `b`.
    fn read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        let (len, head) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for k in 0..n {
                len = (len << 8) | *b.get(2 + k)? as usize;
            }
            (len, 2 + n)
        };
        let end = head.checked_add(len)?;
        Some((tag, b.get(..end)?, b.get(head..end)?))
    }
    let (_, _, cert) = read(der)?;
    let (_, _, mut tbs) = read(cert)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, whole, _) = read(tbs)?;
        fields.push((tag, whole));
        tbs = &tbs[whole.len()..];
    }
    // [0] version, serial, signature algorithm, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    fields.get(skip + 4).map(|(_, w)| w.to_vec())
}

/// The signer of a certificate: its subject name (DER), key and key id.
struct Issuer<'a> {
    name: &'a [u8],
    key: &'a rsa::RsaPrivateKey,
    key_id: Vec<u8>,
}

/// Signs a certificate for `t` with `key`'s public key, issued by `issuer` (or self-signed).
fn make_cert(
    ctx: &mut Ctx,
    t: &Template,
    key: &rsa::RsaPrivateKey,
    issuer: Option<Issuer<'_>>,
) -> Result<Value, String> {
    ctx.cost += SIGN_STEPS;
    let pub_der = key
        .to_public_key()
        .to_pkcs1_der()
        .map_err(|e| e.to_string())?
        .as_bytes()
        .to_vec();
    let null = vec![0x05, 0x00];
    let spki = seq(&[
        seq(&[oid(&[1, 2, 840, 113_549, 1, 1, 1]), null.clone()]),
        bit_string(0, &pub_der),
    ]);
    let sig_alg = seq(&[oid(&[1, 2, 840, 113_549, 1, 1, 11]), null]);
    let mut serial = [0u8; 16];
    ctx.fill(&mut serial);
    let now = ctx.now_ns.div_euclid(1_000_000_000);
    let not_after = now.saturating_add(t.days.saturating_mul(86_400));
    let subject = name(&t.cn);
    let ski = sha1::Sha1::digest(&pub_der).to_vec();
    let mut exts = vec![
        extension(
            &[2, 5, 29, 15],
            true,
            if t.is_ca {
                bit_string(2, &[0xa4])
            } else {
                bit_string(5, &[0xa0])
            },
        ),
        extension(
            &[2, 5, 29, 37],
            false,
            seq(&[
                oid(&[1, 3, 6, 1, 5, 5, 7, 3, 1]),
                oid(&[1, 3, 6, 1, 5, 5, 7, 3, 2]),
            ]),
        ),
        extension(
            &[2, 5, 29, 19],
            true,
            if t.is_ca {
                seq(&[tlv(0x01, &[0xff])])
            } else {
                seq(&[])
            },
        ),
    ];
    if t.is_ca {
        exts.push(extension(&[2, 5, 29, 14], false, tlv(0x04, &ski)));
    }
    if let Some(iss) = &issuer {
        exts.push(extension(
            &[2, 5, 29, 35],
            false,
            seq(&[tlv(0x80, &iss.key_id)]),
        ));
    }
    if !t.dns.is_empty() || !t.ips.is_empty() {
        let mut names: Vec<Vec<u8>> = t.dns.iter().map(|d| tlv(0x82, d.as_bytes())).collect();
        names.extend(t.ips.iter().map(|ip| tlv(0x87, ip)));
        exts.push(extension(&[2, 5, 29, 17], false, seq(&names)));
    }
    let (issuer_name, signer) = match &issuer {
        Some(iss) => (iss.name.to_vec(), iss.key),
        None => (subject.clone(), key),
    };
    let tbs = seq(&[
        tlv(0xa0, &tlv(0x02, &[2])),
        uint(&serial),
        sig_alg.clone(),
        issuer_name,
        seq(&[der_time(now)?, der_time(not_after)?]),
        subject,
        spki,
        tlv(0xa3, &seq(&exts)),
    ]);
    let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(signer.clone())
        .try_sign(&tbs)
        .map_err(|e| e.to_string())?
        .to_vec();
    let cert = seq(&[tbs, sig_alg, bit_string(0, &sig)]);
    let key_der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
    Ok(certificate(
        pem("CERTIFICATE", &cert),
        pem("RSA PRIVATE KEY", key_der.as_bytes()),
    ))
}

fn certificate(cert: String, key: String) -> Value {
    Value::map(BTreeMap::from([
        ("Cert".to_string(), Value::Str(cert)),
        ("Key".to_string(), Value::Str(key)),
    ]))
}

/// `genPrivateKey "rsa"|"ecdsa"` (and "" for rsa). "dsa" is refused: generating 2048-bit DSA
/// parameters takes far longer than a render may.
fn gen_private_key(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 1)?;
    match s(&a[0])? {
        "" | "rsa" => {
            let key = rsa_key(ctx, 4096)?;
            let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
            Ok(Value::Str(pem("RSA PRIVATE KEY", der.as_bytes())))
        }
        "ecdsa" => {
            ctx.cost += SIGN_STEPS;
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let key = p256::SecretKey::random(&mut Seeded(ctx));
            let point = key.public_key().to_encoded_point(false);
            // x509.MarshalECPrivateKey: version, key, [0] curve, [1] public point.
            let der = seq(&[
                tlv(0x02, &[1]),
                tlv(0x04, &key.to_bytes()),
                tlv(0xa0, &oid(&[1, 2, 840, 10_045, 3, 1, 7])),
                tlv(0xa1, &bit_string(0, point.as_bytes())),
            ]);
            Ok(Value::Str(pem("EC PRIVATE KEY", &der)))
        }
        "dsa" => Err("dsa keys are not supported by kiln: use rsa or ecdsa".into()),
        other => Ok(Value::Str(format!("Unknown type {other}"))),
    }
}

fn gen_ca(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let mut t = base_template(name, &a[0], &Value::Nil, &Value::Nil, &a[1])?;
    t.is_ca = true;
    let key = rsa_key(ctx, 2048)?;
    make_cert(ctx, &t, &key, None)
}

fn gen_self_signed_cert(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 4)?;
    let t = base_template(name, &a[0], &a[1], &a[2], &a[3])?;
    let key = rsa_key(ctx, 2048)?;
    make_cert(ctx, &t, &key, None)
}

/// The `Cert` and `Key` strings of a certificate argument.
fn cert_arg(v: &Value) -> Result<(String, String), String> {
    let d = dict_arg(v)?;
    let get = |k: &str| match d.get(k) {
        Some(Value::Str(x)) => x,
        _ => String::new(),
    };
    Ok((get("Cert"), get("Key")))
}

fn gen_signed_cert(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 5)?;
    let (ca_cert, ca_key) = cert_arg(&a[4])?;
    let (_, cert_der) = pem_decode(&ca_cert).ok_or("unable to decode certificate")?;
    let issuer = cert_subject(&cert_der)
        .ok_or("error parsing certificate: decodedSignerCert.Bytes: x509: malformed certificate")?;
    let (_, key_der) = pem_decode(&ca_key).ok_or("unable to decode key")?;
    let signer = rsa::RsaPrivateKey::from_pkcs1_der(&key_der)
        .map_err(|e| format!("error parsing prive key: decodedSignerKey.Bytes: {e}"))?;
    let signer_pub = signer
        .to_public_key()
        .to_pkcs1_der()
        .map_err(|e| e.to_string())?;
    let akid = sha1::Sha1::digest(signer_pub.as_bytes()).to_vec();
    let t = base_template(name, &a[0], &a[1], &a[2], &a[3])?;
    let key = rsa_key(ctx, 2048)?;
    let iss = Issuer {
        name: &issuer,
        key: &signer,
        key_id: akid,
    };
    make_cert(ctx, &t, &key, Some(iss))
}

fn build_custom_cert(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 2)?;
    let cert = go_b64_decode(s(&a[0])?.as_bytes())
        .map_err(|_| "unable to decode base64 certificate".to_string())?;
    let key = go_b64_decode(s(&a[1])?.as_bytes())
        .map_err(|_| "unable to decode base64 private key".to_string())?;
    let cert = String::from_utf8_lossy(&cert).into_owned();
    let key = String::from_utf8_lossy(&key).into_owned();
    let (_, cert_der) = pem_decode(&cert).ok_or("unable to decode certificate")?;
    cert_subject(&cert_der)
        .ok_or("error parsing certificate: decodedCert.Bytes: x509: malformed certificate")?;
    let (_, key_der) = pem_decode(&key).ok_or("unable to decode key")?;
    rsa::RsaPrivateKey::from_pkcs1_der(&key_der)
        .map_err(|e| format!("error parsing prive key: decodedKey.Bytes: {e}"))?;
    Ok(certificate(cert, key))
}

#[cfg(test)]
pub(crate) fn pem_decode_for_tests(text: &str) -> Option<(String, Vec<u8>)> {
    pem_decode(text)
}

#[cfg(test)]
pub(crate) fn cert_subject_for_tests(der: &[u8]) -> Option<Vec<u8>> {
    cert_subject(der)
}
