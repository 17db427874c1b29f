//! Sprig's hashes, random values and crypto: `sha1sum`, `sha256sum`, `adler32sum`, `uuidv4`,
//! `randAlphaNum` and friends, `derivePassword`, `encryptAES`/`decryptAES`. Randomness comes
//! from the render's seeded generator ([`Ctx`]), never from the system.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use hmac::Mac;
use sha2::Digest as _;

use super::encoding::go_b64_decode;
use super::{check_size, i, s, want, Ctx, Func, F};
use crate::template::value::Value;

pub const FUNCS: &[(&str, Func)] = &[
    ("sha1sum", sha1sum),
    ("sha256sum", sha256sum),
    ("adler32sum", adler32sum),
    ("uuidv4", uuidv4),
    ("randAlphaNum", rand_string),
    ("randAlpha", rand_string),
    ("randAscii", rand_string),
    ("randNumeric", rand_string),
    ("derivePassword", derive_password),
    ("encryptAES", encrypt_aes),
    ("decryptAES", decrypt_aes),
];

/// Evaluation steps one `derivePassword` costs (scrypt with N=32768 is slow by design).
const SCRYPT_STEPS: u64 = 100_000;

fn sha1sum(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(hex::encode(sha1::Sha1::digest(
        s(&a[0])?.as_bytes(),
    ))))
}

fn sha256sum(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    Ok(Value::Str(hex::encode(sha2::Sha256::digest(
        s(&a[0])?.as_bytes(),
    ))))
}

/// `hash/adler32.Checksum`, in decimal.
fn adler32sum(name: &str, a: &[Value], _: &mut Ctx) -> F {
    want(name, a, 1)?;
    let (mut x, mut y) = (1u32, 0u32);
    for chunk in s(&a[0])?.as_bytes().chunks(5552) {
        for &c in chunk {
            x += u32::from(c);
            y += x;
        }
        x %= 65521;
        y %= 65521;
    }
    Ok(Value::Str(((y << 16) | x).to_string()))
}

fn uuidv4(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 0)?;
    let mut b = [0u8; 16];
    ctx.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(Value::Str(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )))
}

/// goutils `CryptoRandom*`: `count` characters from the function's alphabet ("" for a
/// negative count, as Sprig ignores the error).
fn rand_string(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 1)?;
    let n = i(&a[0])?;
    if n <= 0 {
        return Ok(Value::Str(String::new()));
    }
    check_size(n as usize, ctx.limit, name)?;
    let alphabet: Vec<u8> = match name {
        "randAlphaNum" => (b'0'..=b'9')
            .chain(b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .collect(),
        "randAlpha" => (b'A'..=b'Z').chain(b'a'..=b'z').collect(),
        "randNumeric" => (b'0'..=b'9').collect(),
        _ => (32u8..127).collect(),
    };
    ctx.cost += n as u64 / 64;
    let out: String = (0..n)
        .map(|_| alphabet[ctx.below(alphabet.len() as u64) as usize] as char)
        .collect();
    Ok(Value::Str(out))
}

const MASTER_PASSWORD_SEED: &str = "com.lyndir.masterpassword";

fn templates(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "maximum" => &["anoxxxxxxxxxxxxxxxxx", "axxxxxxxxxxxxxxxxxno"],
        "long" => &[
            "CvcvnoCvcvCvcv",
            "CvcvCvcvnoCvcv",
            "CvcvCvcvCvcvno",
            "CvccnoCvcvCvcv",
            "CvccCvcvnoCvcv",
            "CvccCvcvCvcvno",
            "CvcvnoCvccCvcv",
            "CvcvCvccnoCvcv",
            "CvcvCvccCvcvno",
            "CvcvnoCvcvCvcc",
            "CvcvCvcvnoCvcc",
            "CvcvCvcvCvccno",
            "CvccnoCvccCvcv",
            "CvccCvccnoCvcv",
            "CvccCvccCvcvno",
            "CvcvnoCvccCvcc",
            "CvcvCvccnoCvcc",
            "CvcvCvccCvccno",
            "CvccnoCvcvCvcc",
            "CvccCvcvnoCvcc",
            "CvccCvcvCvccno",
        ],
        "medium" => &["CvcnoCvc", "CvcCvcno"],
        "short" => &["Cvcn"],
        "basic" => &["aaanaaan", "aannaaan", "aaannaaa"],
        "pin" => &["nnnn"],
        _ => return None,
    })
}

fn template_chars(c: u8) -> &'static [u8] {
    match c {
        b'V' => b"AEIOU",
        b'C' => b"BCDFGHJKLMNPQRSTVWXYZ",
        b'v' => b"aeiou",
        b'c' => b"bcdfghjklmnpqrstvwxyz",
        b'A' => b"AEIOUBCDFGHJKLMNPQRSTVWXYZ",
        b'a' => b"AEIOUaeiouBCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz",
        b'n' => b"0123456789",
        b'o' => b"@&%?,=[]_:-+*$#!'^~;()/.",
        _ => b"AEIOUaeiouBCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz0123456789!@#$%^&*()",
    }
}

/// Sprig's `derivePassword counter type password user site` (the Master Password
/// algorithm: scrypt, then HMAC-SHA256 choosing template characters).
fn derive_password(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 5)?;
    let counter = i(&a[0])? as u32;
    let (kind, password, user, site) = (s(&a[1])?, s(&a[2])?, s(&a[3])?, s(&a[4])?);
    let Some(temps) = templates(kind) else {
        return Ok(Value::Str(format!("cannot find password template {kind}")));
    };
    ctx.spend(name, SCRYPT_STEPS)?;
    let mut salt = MASTER_PASSWORD_SEED.as_bytes().to_vec();
    salt.extend_from_slice(&(user.len() as u32).to_be_bytes());
    salt.extend_from_slice(user.as_bytes());
    let mut key = [0u8; 64];
    let params = scrypt::Params::new(15, 8, 2, 64).map_err(|e| e.to_string())?;
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut key).map_err(|e| e.to_string())?;
    let mut msg = MASTER_PASSWORD_SEED.as_bytes().to_vec();
    msg.extend_from_slice(&(site.len() as u32).to_be_bytes());
    msg.extend_from_slice(site.as_bytes());
    msg.extend_from_slice(&counter.to_be_bytes());
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(&msg);
    let seed = mac.finalize().into_bytes();
    let temp = temps[seed[0] as usize % temps.len()].as_bytes();
    let out: String = temp
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let chars = template_chars(*c);
            chars[seed[k + 1] as usize % chars.len()] as char
        })
        .collect();
    Ok(Value::Str(out))
}

fn aes_key(password: &str) -> aes::Aes256 {
    let mut key = [0u8; 32];
    let p = password.as_bytes();
    let n = p.len().min(32);
    key[..n].copy_from_slice(&p[..n]);
    aes::Aes256::new(&key.into())
}

/// AES-256-CBC with PKCS#7 padding and a random IV, base64 (Sprig's `encryptAES`).
fn encrypt_aes(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (password, plain) = (s(&a[0])?, s(&a[1])?);
    if plain.is_empty() {
        return Ok(Value::Str(String::new()));
    }
    check_size(
        plain.len().saturating_mul(2).saturating_add(64),
        ctx.limit,
        name,
    )?;
    let cipher = aes_key(password);
    let mut content = plain.as_bytes().to_vec();
    let pad = 16 - content.len() % 16;
    content.extend(std::iter::repeat_n(pad as u8, pad));
    let mut iv = [0u8; 16];
    ctx.fill(&mut iv);
    let mut out = iv.to_vec();
    let mut prev = iv;
    for block in content.chunks(16) {
        let mut b = [0u8; 16];
        for k in 0..16 {
            b[k] = block[k] ^ prev[k];
        }
        let mut ga = b.into();
        cipher.encrypt_block(&mut ga);
        prev = ga.into();
        out.extend_from_slice(&prev);
    }
    ctx.cost += out.len() as u64 / 64;
    Ok(Value::Str(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        out,
    )))
}

fn decrypt_aes(name: &str, a: &[Value], ctx: &mut Ctx) -> F {
    want(name, a, 2)?;
    let (password, crypt64) = (s(&a[0])?, s(&a[1])?);
    if crypt64.is_empty() {
        return Ok(Value::Str(String::new()));
    }
    let data = go_b64_decode(crypt64.as_bytes())
        .map_err(|at| format!("illegal base64 data at input byte {at}"))?;
    if data.len() < 16 || data.len() % 16 != 0 {
        return Err("crypto/cipher: input not full blocks".into());
    }
    let cipher = aes_key(password);
    let (iv, body) = data.split_at(16);
    let mut prev: [u8; 16] = iv.try_into().map_err(|_| "bad IV".to_string())?;
    let mut out = Vec::with_capacity(body.len());
    for block in body.chunks(16) {
        let mut ga: aes::Block = <[u8; 16]>::try_from(block)
            .map_err(|_| "crypto/cipher: input not full blocks".to_string())?
            .into();
        cipher.decrypt_block(&mut ga);
        for k in 0..16 {
            out.push(ga[k] ^ prev[k]);
        }
        prev.copy_from_slice(block);
    }
    ctx.cost += out.len() as u64 / 64;
    let pad = out.last().copied().unwrap_or(0) as usize;
    if pad > out.len() {
        return Err("runtime error: slice bounds out of range (bad padding)".into());
    }
    out.truncate(out.len() - pad);
    Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()))
}
