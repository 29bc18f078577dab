//! A chunked body checker (RFC 9112 §7.1) that leaves the bytes alone: the proxy re-emits what
//! it received, and this decoder only says which bytes are chunk data, which are framing, and
//! where the message ends, refusing anything outside the grammar:
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Decisions: CRLF only (a bare LF ends nothing and is refused, as in the head); whitespace is
//! allowed only where the grammar's BWS is (before `;` and around `=`), so `5 \r\n` is refused;
//! a chunk line (size and extensions) is at most [`MAX_CHUNK_LINE`] bytes; the extensions of one
//! body total less than [`EXTENSION_BUDGET`] bytes (hyper's budget, so that nothing hyper refuses
//! passes here); the trailer section is bounded by the head limit, its fields held to the field
//! grammar (no obs-fold, no whitespace before the colon). Input may be split anywhere.

use super::error::ChunkError;
use super::target::is_tchar;

/// Longest chunk line, size and extensions, without its CRLF.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Extension bytes (from each `;` to the line's CR) a body may carry in total.
pub const EXTENSION_BUDGET: usize = 16 * 1024;

/// What a [`ChunkedDecoder::step`] consumed from the front of its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Chunk lines, CRLFs or trailer bytes (0 only for empty input).
    Framing(usize),
    /// Chunk data.
    Data(usize),
    /// The last bytes of the message; what follows them belongs to the next message.
    End(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Size,
    /// After BWS following the size or an extension: only more BWS or `;`.
    BeforeSemi,
    ExtBeforeName,
    ExtName,
    ExtAfterName,
    ExtBeforeValue,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    ExtAfterQuoted,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The state of one chunked body.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: usize,
    line: usize,
    extensions: usize,
    trailers: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder whose trailer section may hold up to `max_trailer_bytes` (the head limit).
    pub fn new(max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            extensions: 0,
            trailers: 0,
            max_trailer_bytes,
        }
    }

    /// Whether the final chunk and trailer section were seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input` of one kind (see [`Decoded`]).
    pub fn step(&mut self, input: &[u8]) -> Result<Decoded, ChunkError> {
        match self.state {
            State::Done => return Ok(Decoded::End(0)),
            State::Data => {
                let n = input
                    .len()
                    .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(n));
            }
            _ => {}
        }
        for (at, &byte) in input.iter().enumerate() {
            self.byte(byte)?;
            match self.state {
                State::Data => return Ok(Decoded::Framing(at + 1)),
                State::Done => return Ok(Decoded::End(at + 1)),
                _ => {}
            }
        }
        Ok(Decoded::Framing(input.len()))
    }

    /// Consumes as much of `input` as belongs to this body: `(consumed, done)`.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut used = 0;
        while used < input.len() {
            match self.step(&input[used..])? {
                Decoded::Framing(n) | Decoded::Data(n) => used += n,
                Decoded::End(n) => return Ok((used + n, true)),
            }
        }
        Ok((used, self.is_done()))
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.in_chunk_line() {
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return Err(ChunkError::LineTooLong);
            }
            if self.state != State::Size {
                self.extensions += 1;
                if self.extensions >= EXTENSION_BUDGET {
                    return Err(ChunkError::ExtensionsTooLarge);
                }
            }
        } else if self.in_trailers() {
            self.trailers += 1;
            if self.trailers > self.max_trailer_bytes {
                return Err(ChunkError::TrailersTooLarge);
            }
        }
        if b == b'\n' && self.state != State::SizeLf && !self.expects_lf() {
            return Err(ChunkError::LineEnding);
        }
        self.state = match self.state {
            State::Size => self.size_byte(b)?,
            State::SizeLf => self.size_line_end(b)?,
            State::DataCr => expect(b, b'\r', State::DataLf)?,
            State::DataLf => {
                self.line = 0;
                expect(b, b'\n', State::Size)?
            }
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::EndLf => self.trailer_byte(b)?,
            // `step` never hands these states a byte.
            State::Data | State::Done => self.state,
            ext => extension_byte(ext, b)?,
        };
        Ok(())
    }

    fn in_chunk_line(&self) -> bool {
        !matches!(
            self.state,
            State::SizeLf | State::Data | State::DataCr | State::DataLf | State::Done
        ) && !self.in_trailers()
    }

    fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::EndLf
        )
    }

    fn expects_lf(&self) -> bool {
        matches!(self.state, State::DataLf | State::TrailerLf | State::EndLf)
    }

    fn size_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        if let Some(digit) = (b as char).to_digit(16) {
            self.digits += 1;
            self.size = self
                .size
                .checked_mul(16)
                .and_then(|size| size.checked_add(u64::from(digit)))
                .ok_or(ChunkError::SizeOverflow)?;
            return Ok(State::Size);
        }
        match b {
            _ if self.digits == 0 => Err(ChunkError::Size),
            b'\r' => Ok(State::SizeLf),
            b';' => Ok(State::ExtBeforeName),
            b' ' | b'\t' => Ok(State::BeforeSemi),
            _ => Err(ChunkError::Size),
        }
    }

    fn size_line_end(&mut self, b: u8) -> Result<State, ChunkError> {
        let next = if self.size == 0 {
            State::TrailerStart
        } else {
            State::Data
        };
        self.digits = 0;
        self.line = 0;
        expect(b, b'\n', next)
    }

    fn trailer_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b) if is_field_vchar(b) || b == b' ' || b == b'\t' => {
                State::TrailerValue
            }
            (State::TrailerLf, b) => expect(b, b'\n', State::TrailerStart)?,
            (State::EndLf, b) => expect(b, b'\n', State::Done)?,
            _ => return Err(ChunkError::Trailer),
        })
    }
}

/// The chunk-ext grammar, one byte at a time (BWS = SP / HTAB).
fn extension_byte(state: State, b: u8) -> Result<State, ChunkError> {
    let ws = b == b' ' || b == b'\t';
    Ok(match (state, b) {
        (State::BeforeSemi, _) if ws => State::BeforeSemi,
        (State::BeforeSemi, b';') => State::ExtBeforeName,
        (State::ExtBeforeName, _) if ws => State::ExtBeforeName,
        (State::ExtBeforeName | State::ExtName, b) if is_tchar(b) => State::ExtName,
        (State::ExtName | State::ExtAfterName, _) if ws => State::ExtAfterName,
        (State::ExtName | State::ExtAfterName, b'=') => State::ExtBeforeValue,
        (State::ExtBeforeValue, _) if ws => State::ExtBeforeValue,
        (State::ExtBeforeValue, b'"') => State::ExtQuoted,
        (State::ExtBeforeValue | State::ExtToken, b) if is_tchar(b) => State::ExtToken,
        (State::ExtQuoted, b'"') => State::ExtAfterQuoted,
        (State::ExtQuoted, b'\\') => State::ExtQuotedEscape,
        (State::ExtQuoted, b) if is_qdtext(b) => State::ExtQuoted,
        (State::ExtQuotedEscape, b) if is_field_vchar(b) || ws => State::ExtQuoted,
        (State::ExtName | State::ExtToken | State::ExtAfterQuoted, _) if ws => State::BeforeSemi,
        (State::ExtName | State::ExtAfterName | State::ExtToken | State::ExtAfterQuoted, b';') => {
            State::ExtBeforeName
        }
        (State::ExtName | State::ExtToken | State::ExtAfterQuoted, b'\r') => State::SizeLf,
        _ => return Err(ChunkError::Extension),
    })
}

fn expect(b: u8, wanted: u8, next: State) -> Result<State, ChunkError> {
    if b == wanted {
        Ok(next)
    } else {
        Err(ChunkError::LineEnding)
    }
}

/// RFC 9110 §5.5 field-vchar: VCHAR / obs-text.
fn is_field_vchar(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// RFC 9110 §5.6.4 qdtext.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e) || b >= 0x80
}
