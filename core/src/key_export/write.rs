//! Writing an export key by key, as the keys are read from the store: one key is held in
//! clear at a time, whatever the number of keys.

use std::io::Write;

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{
    Aes256Ctr, ExportedRoomKey, FOOTER, HEADER, IV, KeyExportError, LINE, MAX_ROUNDS, SALT,
    VERSION, derive, mac_of,
};

/// Raw bytes per base64 line.
const LINE_BYTES: usize = LINE / 4 * 3;

/// An export being written: [`ExportWriter::push`] each key, then [`ExportWriter::finish`].
/// Dropped before `finish`, what it wrote is not a valid export (no MAC): the caller
/// removes the file.
pub struct ExportWriter<W: Write> {
    out: Base64Lines<W>,
    aes: Aes256Ctr,
    mac: Hmac<Sha256>,
    keys: u64,
}

impl<W: Write> std::fmt::Debug for ExportWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportWriter")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<W: Write> ExportWriter<W> {
    /// Start an export to `out`, its keys derived from `passphrase` with `rounds` of PBKDF2
    /// (a fresh random salt and IV; bit 63 of the IV cleared, as the spec asks).
    pub fn new(out: W, passphrase: &str, rounds: u32) -> Result<Self, KeyExportError> {
        if rounds == 0 || rounds > MAX_ROUNDS {
            return Err(KeyExportError::InvalidRounds(rounds));
        }
        let mut salt = [0u8; SALT];
        let mut iv = [0u8; IV];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut iv);
        iv[8] &= 0x7f;
        let derived = derive(passphrase, &salt, rounds);
        let mut prefix = vec![VERSION];
        prefix.extend_from_slice(&salt);
        prefix.extend_from_slice(&iv);
        prefix.extend_from_slice(&rounds.to_be_bytes());
        let mut out = Base64Lines::new(out)?;
        out.write(&prefix)?;
        let mut writer = Self {
            aes: Aes256Ctr::new(derived[..32].into(), (&iv).into()),
            mac: mac_of(&derived[32..], &prefix)?,
            out,
            keys: 0,
        };
        writer.encrypted(b"[")?;
        Ok(writer)
    }

    /// Append one key.
    pub fn push(&mut self, key: &ExportedRoomKey) -> Result<(), KeyExportError> {
        let json = Zeroizing::new(
            serde_json::to_vec(key).map_err(|e| KeyExportError::InvalidContent(e.to_string()))?,
        );
        if self.keys > 0 {
            self.encrypted(b",")?;
        }
        self.encrypted(&json)?;
        self.keys += 1;
        Ok(())
    }

    /// Keys pushed so far.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Close the list, append the MAC and the last line: the export is complete.
    pub fn finish(mut self) -> Result<W, KeyExportError> {
        self.encrypted(b"]")?;
        let tag = self.mac.clone().finalize().into_bytes();
        self.out.write(&tag)?;
        self.out.finish()
    }

    /// Encrypt `plaintext` (copied: the caller's buffer is left alone), MAC and write it.
    pub(super) fn encrypted(&mut self, plaintext: &[u8]) -> Result<(), KeyExportError> {
        let mut data = Zeroizing::new(plaintext.to_vec());
        self.aes.apply_keystream(&mut data);
        self.mac.update(&data);
        self.out.write(&data)
    }
}

/// The armor: the header line, base64 lines of [`LINE`] characters, the footer line.
struct Base64Lines<W: Write> {
    out: W,
    /// Bytes not yet encoded (less than a line's worth).
    pending: Vec<u8>,
}

impl<W: Write> Base64Lines<W> {
    fn new(mut out: W) -> Result<Self, KeyExportError> {
        writeln!(out, "{HEADER}")?;
        Ok(Self {
            out,
            pending: Vec::with_capacity(2 * LINE_BYTES),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), KeyExportError> {
        self.pending.extend_from_slice(bytes);
        let full = self.pending.len() / LINE_BYTES * LINE_BYTES;
        let mut line = String::with_capacity(LINE + 1);
        for chunk in self.pending[..full].chunks(LINE_BYTES) {
            line.clear();
            STANDARD.encode_string(chunk, &mut line);
            line.push('\n');
            self.out.write_all(line.as_bytes())?;
        }
        self.pending.drain(..full);
        Ok(())
    }

    fn finish(mut self) -> Result<W, KeyExportError> {
        if !self.pending.is_empty() {
            let mut line = STANDARD.encode(&self.pending);
            line.push('\n');
            self.out.write_all(line.as_bytes())?;
        }
        writeln!(self.out, "{FOOTER}")?;
        self.out.flush()?;
        Ok(self.out)
    }
}
