//! Reading an export of any size in bounded memory, in two passes over the file:
//!
//! 1. The MAC is checked over the whole body, before a byte is decrypted, and a SHA-256
//!    digest of each decoded chunk is noted.
//! 2. Each chunk is decoded again, compared with its digest (a file changed since the first
//!    pass stops the import before anything changed is used), decrypted, and the JSON list
//!    is parsed entry by entry, each handed to the caller as soon as it is complete.
//!
//! What is held at any time: one chunk, one entry, and 32 bytes of digest per chunk.

use std::io::{BufRead, Read, Seek, SeekFrom};

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use serde::Deserializer as _;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::{
    Aes256Ctr, ExportedRoomKey, FOOTER, HEADER, IV, KeyExportError, MAC, MAX_ROUNDS, PREFIX, SALT,
    VERSION, derive, mac_of,
};

/// Base64 characters decoded at a time (a multiple of 4: 48 KiB of data).
const CHUNK_CHARS: usize = 64 * 1024;
/// Longest line looked at before the header.
const MAX_LINE: u64 = 4096;

/// One entry of the list.
#[derive(Debug)]
pub enum Entry {
    /// A room key.
    Key(ExportedRoomKey),
    /// Not a room key (why, without its content).
    Invalid(String),
}

/// How far the reading is: both passes count, so `total_bytes` is twice the file's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadProgress {
    /// Bytes read so far.
    pub read_bytes: u64,
    /// Bytes to read in all.
    pub total_bytes: u64,
}

/// Read the export in `input` with `passphrase`, handing each entry to `on_entry` in order
/// once the whole file was authenticated. An error of `on_entry` stops the reading and is
/// returned. Returns the number of entries.
pub fn read_export<R, E>(
    mut input: R,
    passphrase: &str,
    mut on_entry: impl FnMut(Entry) -> Result<(), E>,
    mut on_progress: impl FnMut(ReadProgress),
) -> Result<u64, E>
where
    R: BufRead + Seek,
    E: From<KeyExportError>,
{
    let size = input.seek(SeekFrom::End(0)).map_err(KeyExportError::from)?;
    input.rewind().map_err(KeyExportError::from)?;
    let total_bytes = size.saturating_mul(2);
    let mut progress = |read_bytes| {
        on_progress(ReadProgress {
            read_bytes,
            total_bytes,
        })
    };
    let checked = check(&mut input, passphrase, &mut progress)?;
    input.rewind().map_err(KeyExportError::from)?;
    let mut plaintext = Plaintext::new(Body::open(input)?, &checked);
    plaintext.progress = Some(Box::new(move |read| progress(size + read)));
    let (mut failure, mut count) = (None, 0);
    let mut de = serde_json::Deserializer::from_reader(&mut plaintext);
    let entries = Entries {
        on_entry: &mut on_entry,
        failure: &mut failure,
        count: &mut count,
    };
    let parsed = de.deserialize_seq(entries).and_then(|()| de.end());
    let unread = plaintext.failure.take();
    drop(plaintext);
    if let Some(e) = unread {
        return Err(e.into());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    parsed.map_err(|e| KeyExportError::InvalidContent(e.to_string()))?;
    on_progress(ReadProgress {
        read_bytes: total_bytes,
        total_bytes,
    });
    Ok(count)
}

/// What the first pass learnt.
struct Checked {
    keys: Zeroizing<[u8; 64]>,
    iv: [u8; IV],
    /// Decoded bytes in all.
    total: u64,
    /// SHA-256 of each decoded chunk.
    digests: Vec<[u8; 32]>,
}

/// The prefix's keys and a MAC to feed everything before the tag to.
struct Header {
    keys: Zeroizing<[u8; 64]>,
    iv: [u8; IV],
    mac: Hmac<Sha256>,
}

/// Parse the prefix (in the first chunk) and derive the keys.
fn header(first: &[u8], passphrase: &str) -> Result<Header, KeyExportError> {
    if first.len() < PREFIX + MAC {
        return Err(KeyExportError::Truncated);
    }
    if first[0] != VERSION {
        return Err(KeyExportError::UnsupportedVersion(first[0]));
    }
    let mut rounds = [0u8; 4];
    rounds.copy_from_slice(&first[1 + SALT + IV..PREFIX]);
    let rounds = u32::from_be_bytes(rounds);
    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(KeyExportError::InvalidRounds(rounds));
    }
    let keys = derive(passphrase, &first[1..1 + SALT], rounds);
    let mut iv = [0u8; IV];
    iv.copy_from_slice(&first[1 + SALT..1 + SALT + IV]);
    let mac = mac_of(&keys[32..], &[])?;
    Ok(Header { keys, iv, mac })
}

/// The first pass: the MAC over the whole body, and the chunks' digests.
fn check<R: BufRead>(
    input: R,
    passphrase: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<Checked, KeyExportError> {
    let mut body = Body::open(input)?;
    let (mut chunk, mut held) = (Vec::new(), Vec::new());
    let mut header_keys: Option<Header> = None;
    let (mut digests, mut total) = (Vec::new(), 0u64);
    while body.next_chunk(&mut chunk)? {
        let h = match &mut header_keys {
            Some(h) => h,
            None => header_keys.insert(header(&chunk, passphrase)?),
        };
        digests.push(Sha256::digest(&chunk).into());
        total += chunk.len() as u64;
        // The last MAC bytes seen so far may be the tag: held back until the end.
        held.extend_from_slice(&chunk);
        let n = held.len().saturating_sub(MAC);
        h.mac.update(&held[..n]);
        held.drain(..n);
        progress(body.consumed);
    }
    let Header { keys, iv, mac } = header_keys.ok_or(KeyExportError::Truncated)?;
    mac.verify_slice(&held)
        .map_err(|_| KeyExportError::WrongPassphraseOrTampered)?;
    Ok(Checked {
        keys,
        iv,
        total,
        digests,
    })
}

/// The decoded bytes between the armor lines, chunk by chunk (whitespace ignored; padded
/// or not: writers differ).
struct Body<R> {
    input: R,
    chars: Vec<u8>,
    ended: bool,
    /// Bytes of the file consumed.
    consumed: u64,
}

fn not_an_export(why: &str) -> KeyExportError {
    KeyExportError::NotAnExport(why.to_owned())
}

impl<R: BufRead> Body<R> {
    /// Skip to the line after the header.
    fn open(mut input: R) -> Result<Self, KeyExportError> {
        let (mut line, mut consumed) = (Vec::new(), 0u64);
        loop {
            line.clear();
            let n = (&mut input).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(not_an_export("no BEGIN line"));
            }
            consumed += n as u64;
            if String::from_utf8_lossy(&line).trim() == HEADER {
                break;
            }
        }
        Ok(Self {
            input,
            chars: Vec::with_capacity(CHUNK_CHARS),
            ended: false,
            consumed,
        })
    }

    /// The next decoded chunk into `out` (cleared first); `false` after the last one.
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, KeyExportError> {
        out.clear();
        if self.ended {
            return Ok(false);
        }
        while self.chars.len() < CHUNK_CHARS {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Err(not_an_export("no END line"));
            }
            let mut used = 0;
            let mut footer = false;
            for &b in buf {
                if b == b'-' {
                    footer = true;
                    break;
                }
                used += 1;
                if !b.is_ascii_whitespace() {
                    self.chars.push(b);
                    if self.chars.len() == CHUNK_CHARS {
                        break;
                    }
                }
            }
            self.input.consume(used);
            self.consumed += used as u64;
            if footer {
                self.check_footer()?;
                break;
            }
        }
        if self.chars.is_empty() {
            return Ok(false);
        }
        let engine = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        engine
            .decode_vec(&self.chars, out)
            .map_err(|e| not_an_export(&format!("base64: {e}")))?;
        self.chars.clear();
        Ok(true)
    }

    fn check_footer(&mut self) -> Result<(), KeyExportError> {
        let mut footer = Vec::with_capacity(FOOTER.len());
        let n = (&mut self.input)
            .take(FOOTER.len() as u64)
            .read_to_end(&mut footer)?;
        self.consumed += n as u64;
        if footer != FOOTER.as_bytes() {
            return Err(not_an_export("no END line"));
        }
        self.ended = true;
        Ok(())
    }
}

/// The second pass, as a reader of the plaintext: each chunk checked against its digest,
/// then decrypted (the prefix and the tag left out).
struct Plaintext<'c, R> {
    body: Body<R>,
    checked: &'c Checked,
    aes: Aes256Ctr,
    chunks: usize,
    /// Decoded bytes before the current chunk.
    offset: u64,
    raw: Vec<u8>,
    clear: Zeroizing<Vec<u8>>,
    pos: usize,
    /// Why reading stopped (the JSON parser only sees an I/O error).
    failure: Option<KeyExportError>,
    progress: Option<Box<dyn FnMut(u64) + 'c>>,
}

impl<'c, R: BufRead> Plaintext<'c, R> {
    fn new(body: Body<R>, checked: &'c Checked) -> Self {
        Self {
            body,
            checked,
            aes: Aes256Ctr::new(checked.keys[..32].into(), (&checked.iv).into()),
            chunks: 0,
            offset: 0,
            raw: Vec::new(),
            clear: Zeroizing::new(Vec::new()),
            pos: 0,
            failure: None,
            progress: None,
        }
    }

    /// Decrypt the next chunk into `clear`; `false` at the end.
    fn next(&mut self) -> Result<bool, KeyExportError> {
        if !self.body.next_chunk(&mut self.raw)? {
            if self.chunks != self.checked.digests.len() {
                return Err(KeyExportError::ChangedWhileReading);
            }
            return Ok(false);
        }
        let expected = self.checked.digests.get(self.chunks);
        if expected.is_none_or(|d| Sha256::digest(&self.raw)[..] != d[..]) {
            return Err(KeyExportError::ChangedWhileReading);
        }
        self.chunks += 1;
        let start = self.offset;
        self.offset += self.raw.len() as u64;
        let lo = start.max(PREFIX as u64);
        let hi = self.offset.min(self.checked.total - MAC as u64);
        self.clear.clear();
        self.pos = 0;
        if lo < hi {
            let (lo, hi) = ((lo - start) as usize, (hi - start) as usize);
            self.clear.extend_from_slice(&self.raw[lo..hi]);
            self.aes.apply_keystream(&mut self.clear);
        }
        if let Some(progress) = &mut self.progress {
            progress(self.body.consumed);
        }
        Ok(true)
    }
}

impl<R: BufRead> Read for Plaintext<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.clear.len() {
            match self.next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failure = Some(e);
                    return Err(std::io::Error::other("the key export could not be read"));
                }
            }
        }
        let n = buf.len().min(self.clear.len() - self.pos);
        buf[..n].copy_from_slice(&self.clear[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The JSON list, entry by entry.
struct Entries<'f, F, E> {
    on_entry: &'f mut F,
    failure: &'f mut Option<E>,
    count: &'f mut u64,
}

impl<'de, F, E> Visitor<'de> for Entries<'_, F, E>
where
    F: FnMut(Entry) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of room keys")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            let mut text = String::from(Box::<str>::from(raw));
            let entry = match serde_json::from_str::<ExportedRoomKey>(&text) {
                Ok(key) => Entry::Key(key),
                Err(e) => Entry::Invalid(format!("entry {}: {e}", *self.count)),
            };
            text.zeroize();
            *self.count += 1;
            if let Err(e) = (self.on_entry)(entry) {
                *self.failure = Some(e);
                return Err(A::Error::custom("stopped by the caller"));
            }
        }
        Ok(())
    }
}
