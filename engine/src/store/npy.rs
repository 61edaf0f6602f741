//! numpy `.npy` files (format 1.0): a header that `numpy.load(path, mmap_mode="r")` reads, then the
//! raw little-endian rows. Written incrementally (rows appended, the header fixed in size up front) and
//! read back memory-mapped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

/// Element type of a vector file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F16 => "<f2",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            _ => Err(format!("unknown dtype `{s}` (f32 | f16)")),
        }
    }
}

/// Every header is padded to this many bytes, so a header for any row count has the same length and
/// can be rewritten in place when rows are appended.
pub const HEADER_LEN: usize = 128;

/// The header bytes for `rows x cols` of `dtype` (or a 1-D array of `rows` when `cols` is None).
pub fn header(dtype: Dtype, rows: usize, cols: Option<usize>) -> Vec<u8> {
    let shape = match cols {
        Some(c) => format!("({rows}, {c})"),
        None => format!("({rows},)"),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        dtype.descr()
    );
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(b"\x93NUMPY\x01\x00");
    let body_len = HEADER_LEN - 10;
    h.extend_from_slice(&(body_len as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    while h.len() < HEADER_LEN - 1 {
        h.push(b' ');
    }
    h.push(b'\n');
    h
}

/// Parsed header of an `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    /// Dimensions of the array: 1 (a column, `cols` = 1) or 2.
    pub ndim: usize,
    /// Where the data starts.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Bytes of the data the header describes (`rows x cols x` item size). [`parse_header`] refuses
    /// a shape whose bytes, with the header's, do not fit in a u64, so this does not overflow.
    pub fn data_bytes(&self) -> u64 {
        (self.rows as u64)
            .saturating_mul(self.cols as u64)
            .saturating_mul(self.dtype.size() as u64)
    }

    /// The file's whole length: header and data.
    pub fn file_bytes(&self) -> u64 {
        (self.data_offset as u64).saturating_add(self.data_bytes())
    }
}

/// The longest header read (numpy writes about 128 bytes, and itself refuses more than 10,000 unless
/// told otherwise): a longer one is refused before it is read.
pub const MAX_HEADER_LEN: usize = 1 << 16;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The start and length of the header's dictionary, from the file's first bytes (magic, version,
/// length). `Ok(None)`: `bytes` is too short to tell, but begins as an `.npy` file does.
fn preamble(bytes: &[u8]) -> std::result::Result<Option<(usize, usize)>, String> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err("the magic bytes are missing (it is not an .npy file)".into());
    }
    let (Some(&major), Some(&minor)) = (bytes.get(6), bytes.get(7)) else {
        return Ok(None);
    };
    let start = match (major, minor) {
        (1, 0) => 10,
        (2, 0) | (3, 0) => 12,
        _ => {
            return Err(format!(
                "format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"
            ))
        }
    };
    let Some(b) = bytes.get(8..start) else {
        return Ok(None);
    };
    let len = match *b {
        [a, b] => u16::from_le_bytes([a, b]) as usize,
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => unreachable!("the length is 2 or 4 bytes"),
    };
    if len > MAX_HEADER_LEN {
        return Err(format!(
            "the header says it is {len} bytes long, more than the {MAX_HEADER_LEN} read: \
             the file is damaged (numpy writes headers of about 128 bytes)"
        ));
    }
    Ok(Some((start, len)))
}

/// Parses the header at the start of `bytes` (an `.npy` file's first bytes: the magic, the version,
/// the header's length, then its dictionary, a Python literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 768), }`): any key order, any whitespace,
/// a trailing comma, versions 1.0 to 3.0. Only little-endian float32 or float16 in C order is taken,
/// of one or two dimensions; the data's size (`rows x cols x` item size, plus the header) must fit
/// in a u64. `path` names the file in errors. Nothing is allocated beyond the dictionary's values.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |m: &str| Error::invalid(path, None, format!("not a usable .npy file: {m}"));
    if bytes.is_empty() {
        return Err(bad("the file is empty"));
    }
    let (start, len) = preamble(bytes)
        .map_err(|m| bad(&m))?
        .ok_or_else(|| bad("the file ends within the header (it is truncated)"))?;
    let dict = bytes
        .get(start..start + len)
        .ok_or_else(|| bad("the file ends within the header (it is truncated)"))?;
    let fields = literal::parse_dict(dict).map_err(|m| bad(&format!("the header {m}")))?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in fields {
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            _ => {
                return Err(bad(&format!(
                    "the header has a key '{key}' besides 'descr', 'fortran_order' and 'shape'"
                )))
            }
        };
        if slot.replace(value).is_some() {
            return Err(bad(&format!("the header gives '{key}' twice")));
        }
    }
    let missing = |k: &str| bad(&format!("the header has no '{k}'"));
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran = fortran.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;

    let dtype = match &descr {
        literal::Value::Str(s) if s == "<f4" => Dtype::F32,
        literal::Value::Str(s) if s == "<f2" => Dtype::F16,
        other => {
            return Err(bad(&format!(
                "dtype {other} is not little-endian float32 or float16: save the array with \
                 `np.save(path, x.astype(np.float32))`"
            )))
        }
    };
    match fortran {
        literal::Value::Bool(false) => {}
        literal::Value::Bool(true) => {
            return Err(bad(
                "the array is in Fortran (column-major) order: save it with \
                 `np.save(path, np.ascontiguousarray(x))`",
            ))
        }
        other => {
            return Err(bad(&format!(
                "'fortran_order' is {other}, not True or False"
            )))
        }
    }
    let dims: Vec<u64> = match &shape {
        literal::Value::Tuple(items) => items
            .iter()
            .map(|v| match v {
                literal::Value::Int(n) => Some(*n),
                _ => None,
            })
            .collect::<Option<_>>(),
        _ => None,
    }
    .ok_or_else(|| bad(&format!("'shape' is {shape}, not a tuple of whole numbers")))?;
    let (rows, cols) = match dims[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => {
            return Err(bad(&format!(
                "expected a 2-D array (rows x dimensions), found shape {shape}"
            )))
        }
    };
    let data_offset = start + len;
    let fits = rows
        .checked_mul(cols)
        .and_then(|v| v.checked_mul(dtype.size() as u64))
        .and_then(|b| b.checked_add(data_offset as u64))
        .is_some();
    let (Ok(rows), Ok(cols), true) = (usize::try_from(rows), usize::try_from(cols), fits) else {
        return Err(bad(&format!(
            "the shape {shape} needs more bytes than any file holds: the header is damaged"
        )));
    };
    Ok(NpyHeader {
        dtype,
        rows,
        cols,
        ndim: dims.len(),
        data_offset,
    })
}

/// The Python literals an `.npy` header is written in: a dict of strings, booleans, whole numbers
/// and tuples (lists and `None` are read, to be named in errors).
mod literal {
    use std::fmt;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Value {
        Str(String),
        Bool(bool),
        None,
        Int(u64),
        Tuple(Vec<Value>),
        List(Vec<Value>),
    }

    impl fmt::Display for Value {
        /// As Python prints it.
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let seq = |f: &mut fmt::Formatter<'_>, items: &[Value]| {
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                Ok(())
            };
            match self {
                Value::Str(s) => write!(f, "'{}'", s.escape_debug()),
                Value::Bool(true) => f.write_str("True"),
                Value::Bool(false) => f.write_str("False"),
                Value::None => f.write_str("None"),
                Value::Int(n) => write!(f, "{n}"),
                Value::Tuple(items) => {
                    f.write_str("(")?;
                    seq(f, items)?;
                    f.write_str(if items.len() == 1 { ",)" } else { ")" })
                }
                Value::List(items) => {
                    f.write_str("[")?;
                    seq(f, items)?;
                    f.write_str("]")
                }
            }
        }
    }

    /// Nesting deeper than this is refused (a header's values nest two deep at most).
    const MAX_DEPTH: usize = 16;

    /// Parses `{key: value, ...}` followed by nothing but whitespace; the error says where.
    pub fn parse_dict(text: &[u8]) -> Result<Vec<(String, Value)>, String> {
        let mut p = Parser { s: text, i: 0 };
        p.expect(b'{')?;
        let mut fields = Vec::new();
        loop {
            if p.eat(b'}') {
                break;
            }
            let key = match p.value(0)? {
                Value::Str(k) => k,
                other => return Err(p.error(&format!("has a key {other} that is not a string"))),
            };
            p.expect(b':')?;
            let value = p.value(0)?;
            fields.push((key, value));
            if !p.eat(b',') {
                p.expect(b'}')?;
                break;
            }
        }
        p.ws();
        if p.i < p.s.len() {
            return Err(p.error("goes on after its dictionary"));
        }
        Ok(fields)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn error(&self, what: &str) -> String {
            match self.s.get(self.i) {
                Some(&c) => format!(
                    "{what} (at byte {} of the dictionary, {:?})",
                    self.i, c as char
                ),
                None => format!("{what} (at its end)"),
            }
        }

        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') = self.s.get(self.i) {
                self.i += 1;
            }
        }

        /// Skips whitespace, then `c` if it is next.
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            let next = self.s.get(self.i) == Some(&c);
            self.i += next as usize;
            next
        }

        fn expect(&mut self, c: u8) -> Result<(), String> {
            if self.eat(c) {
                Ok(())
            } else {
                Err(self.error(&format!("is not a Python dict: expected {:?}", c as char)))
            }
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err(self.error("nests values too deeply"));
            }
            self.ws();
            match self.s.get(self.i).copied() {
                Some(b'\'' | b'"') => self.string(),
                Some(b'u' | b'U') if matches!(self.s.get(self.i + 1), Some(b'\'' | b'"')) => {
                    self.i += 1;
                    self.string()
                }
                Some(b'(') => {
                    self.i += 1;
                    let (items, comma) = self.items(b')', depth)?;
                    // `(x)` is x in parentheses, not a tuple.
                    Ok(if items.len() == 1 && !comma {
                        items.into_iter().next().expect("one item")
                    } else {
                        Value::Tuple(items)
                    })
                }
                Some(b'[') => {
                    self.i += 1;
                    Ok(Value::List(self.items(b']', depth)?.0))
                }
                Some(b'0'..=b'9') => self.int(),
                Some(c) if c.is_ascii_alphabetic() => {
                    let from = self.i;
                    while self
                        .s
                        .get(self.i)
                        .is_some_and(|c| c.is_ascii_alphanumeric())
                    {
                        self.i += 1;
                    }
                    match &self.s[from..self.i] {
                        b"True" => Ok(Value::Bool(true)),
                        b"False" => Ok(Value::Bool(false)),
                        b"None" => Ok(Value::None),
                        _ => {
                            self.i = from;
                            Err(self.error("has a word that is not True, False or None"))
                        }
                    }
                }
                _ => Err(self
                    .error("has something that is not a string, a number, True, False or a tuple")),
            }
        }

        /// Values up to `close`, comma-separated, a trailing comma allowed; and whether a comma was
        /// seen.
        fn items(&mut self, close: u8, depth: usize) -> Result<(Vec<Value>, bool), String> {
            let mut items = Vec::new();
            let mut comma = false;
            loop {
                if self.eat(close) {
                    return Ok((items, comma));
                }
                items.push(self.value(depth + 1)?);
                if self.eat(b',') {
                    comma = true;
                } else if self.eat(close) {
                    return Ok((items, comma));
                } else {
                    return Err(self.error(&format!("expected ',' or {:?}", close as char)));
                }
            }
        }

        fn string(&mut self) -> Result<Value, String> {
            let quote = self.s[self.i];
            let from = self.i + 1;
            let mut j = from;
            loop {
                match self.s.get(j) {
                    None | Some(b'\n') => return Err(self.error("has a string that does not end")),
                    Some(b'\\') => j += 2,
                    Some(&c) if c == quote => break,
                    Some(_) => j += 1,
                }
            }
            self.i = j + 1;
            Ok(Value::Str(
                String::from_utf8_lossy(&self.s[from..j]).into_owned(),
            ))
        }

        /// A whole number; Python 2's `L` suffix (numpy's own files of that time) is allowed.
        fn int(&mut self) -> Result<Value, String> {
            let from = self.i;
            let mut n: Option<u64> = Some(0);
            while let Some(&c @ b'0'..=b'9') = self.s.get(self.i) {
                n = n
                    .and_then(|n| n.checked_mul(10))
                    .and_then(|n| n.checked_add(u64::from(c - b'0')));
                self.i += 1;
            }
            if let Some(b'L' | b'l') = self.s.get(self.i) {
                self.i += 1;
            }
            match n {
                Some(n) => Ok(Value::Int(n)),
                None => {
                    self.i = from;
                    Err(self.error("has a number larger than 2^64 - 1"))
                }
            }
        }
    }
}

/// Writes a whole f32 matrix atomically (temporary file, then rename).
pub fn write_f32(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    assert_eq!(data.len(), rows * cols);
    crate::store::atomic_write(path, |f| {
        f.write_all(&header(Dtype::F32, rows, Some(cols)))?;
        write_rows(f, Dtype::F32, data)
    })
}

/// Appends rows (given as f32) in `dtype`, little-endian.
pub fn write_rows(
    w: &mut (impl Write + ?Sized),
    dtype: Dtype,
    data: &[f32],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(data.len() * dtype.size());
    match dtype {
        Dtype::F32 => data
            .iter()
            .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        Dtype::F16 => data
            .iter()
            .for_each(|x| buf.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
    }
    w.write_all(&buf)
}

/// Rewrites the header of an incrementally written file for its final row count.
pub fn finish_header(
    file: &mut File,
    dtype: Dtype,
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header(dtype, rows, Some(cols)))?;
    Ok(())
}

/// Appends rows to an `.npy` file that is being written (`vectors.npy.partial`): created or resumed,
/// rows appended and synced, then finished (header for the final row count, renamed into place). The
/// header is rewritten in place for each row count, so it has a fixed length (`HEADER_LEN`).
pub struct NpyAppender {
    file: File,
    path: PathBuf,
    dtype: Dtype,
    cols: usize,
    rows: usize,
}

impl NpyAppender {
    /// Opens `path` empty (created if needed, any bytes there cut off) to append rows to. A file a
    /// stopped process wrote is continued with [`NpyAppender::continue_after`], once its rows are
    /// checked ([`check_chunks`]).
    pub fn create(path: &Path, dtype: Dtype, cols: usize) -> Result<Self> {
        Self::continue_after(path, dtype, cols, 0)
    }

    /// Opens `path` to continue after its first `rows` rows, which the caller has checked (see
    /// [`check_chunks`]): the bytes past them are cut off and the header is written for `rows`.
    pub fn continue_after(path: &Path, dtype: Dtype, cols: usize, rows: usize) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .at(path)?;
        let row_bytes = (cols * dtype.size()) as u64;
        let need = HEADER_LEN as u64 + rows as u64 * row_bytes;
        if rows > 0 && file.metadata().at(path)?.len() < need {
            return Err(Error::invalid(
                path,
                None,
                format!("holds fewer than the {rows} rows to continue after"),
            ));
        }
        Self::keep(file, path, dtype, cols, rows)
    }

    /// Cuts `file` to its first `rows` rows, writes their header and places the cursor at the end.
    fn keep(mut file: File, path: &Path, dtype: Dtype, cols: usize, rows: usize) -> Result<Self> {
        let row_bytes = (cols * dtype.size()) as u64;
        file.set_len(HEADER_LEN as u64 + rows as u64 * row_bytes)
            .at(path)?;
        file.seek(SeekFrom::Start(0)).at(path)?;
        file.write_all(&header(dtype, rows, Some(cols))).at(path)?;
        file.seek(SeekFrom::End(0)).at(path)?;
        Ok(NpyAppender {
            file,
            path: path.to_path_buf(),
            dtype,
            cols,
            rows,
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends rows given as f32 (converted to the file's dtype) and syncs them to disk; returns the
    /// SHA-256 (hex) of the bytes appended, the record [`check_chunks`] checks them by. A value that
    /// is not finite in the file's dtype is refused, and nothing is written.
    pub fn append_f32(&mut self, data: &[f32]) -> Result<String> {
        let cols = self.cols.max(1);
        debug_assert_eq!(data.len() % cols, 0);
        let mut buf = Vec::with_capacity(data.len() * self.dtype.size());
        write_rows(&mut buf, self.dtype, data).at(&self.path)?;
        if let Some(i) = first_non_finite(&buf, self.dtype) {
            return Err(Error::invalid(
                &self.path,
                None,
                format!(
                    "row {} would hold the non-finite value {} in dimension {} (as {:?}): not written",
                    self.rows + i / cols,
                    data[i],
                    i % cols,
                    self.dtype
                ),
            ));
        }
        self.file.write_all(&buf).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.rows += data.len() / cols;
        Ok(crate::store::manifest::sha256_bytes(&buf))
    }

    /// Appends rows given as raw little-endian bytes of the file's dtype (no sync: `finish` syncs).
    pub fn append_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let row_bytes = self.cols * self.dtype.size();
        debug_assert_eq!(bytes.len() % row_bytes.max(1), 0);
        self.file.write_all(bytes).at(&self.path)?;
        self.rows += bytes.len() / row_bytes.max(1);
        Ok(())
    }

    /// Writes the header for the final row count, syncs, and renames the file to `to`.
    pub fn finish(mut self, to: &Path) -> Result<()> {
        finish_header(&mut self.file, self.dtype, self.rows, self.cols).at(&self.path)?;
        self.file.sync_all().at(&self.path)?;
        drop(self.file);
        std::fs::rename(&self.path, to).at(to)?;
        crate::store::sync_dir(to);
        Ok(())
    }
}

/// The index of the first value in `bytes` (little-endian values of `dtype`) that is not finite.
fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .position(|b| !half::f16::from_le_bytes([b[0], b[1]]).is_finite()),
    }
}

/// What [`check_chunks`] found in a file of rows written by [`NpyAppender::append_f32`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The rows of the chunks found good, in order from the first: the rows to continue after.
    pub rows: usize,
    /// Those chunks.
    pub chunks: usize,
    /// Why the chunk after them is not good (`None`: every recorded chunk is).
    pub problem: Option<String>,
    /// The file's size and the SHA-256 (hex) of all its bytes (header and rows, as read), when
    /// asked for, of a file whose every chunk is good and that holds nothing else.
    pub whole: Option<(u64, String)>,
}

/// Checks the rows of `path` (`cols` values of `dtype` a row, after a header of `HEADER_LEN` bytes)
/// against the record of how they were written: chunk `i`, rows `[i c, min((i + 1) c, rows))` for
/// `c = chunk_rows`, must be in the file, every value finite, and its bytes' SHA-256 `sums[i]`.
/// Chunks are read in order, up to the first that is not good. The header is not trusted (it is
/// rewritten when the file is continued or finished). With `sum_whole` (a finished file), the
/// checksum of the whole file is taken in the same pass, and given when the header is that of
/// `rows` rows and the file holds exactly those rows, every chunk good.
pub fn check_chunks(
    path: &Path,
    dtype: Dtype,
    cols: usize,
    chunk_rows: usize,
    rows: usize,
    sums: &[String],
    sum_whole: bool,
) -> Result<Checked> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let row_bytes = cols * dtype.size();
    let c = chunk_rows.max(1);
    let mut whole = Sha256::new();
    let mut head = vec![0u8; HEADER_LEN];
    let head_len = read_up_to(&mut f, &mut head).at(path)?;
    whole.update(&head[..head_len]);
    let mut out = Checked {
        rows: 0,
        chunks: 0,
        problem: None,
        whole: None,
    };
    // Read in pieces, so that a chunk of any size costs one piece of memory.
    let mut buf = vec![0u8; 1 << 23];
    for (i, sum) in sums.iter().enumerate() {
        let (a, b) = (i * c, ((i + 1) * c).min(rows));
        if a >= b {
            break;
        }
        let what = format!("chunk {} (rows {a}..{b})", i + 1);
        let bytes = (b - a) * row_bytes;
        let mut chunk = Sha256::new();
        let mut at = 0;
        while at < bytes {
            let piece = &mut buf[..(bytes - at).min(1 << 23)];
            let got = read_up_to(&mut f, piece).at(path)?;
            if got < piece.len() {
                out.problem = Some(format!(
                    "{what} is cut short ({} of {bytes} bytes)",
                    at + got
                ));
                return Ok(out);
            }
            if let Some(k) = first_non_finite(piece, dtype) {
                let value = (at / dtype.size() + k) as u64;
                out.problem = Some(format!(
                    "{what} holds a non-finite value (row {}, dimension {})",
                    a as u64 + value / cols.max(1) as u64,
                    value % cols.max(1) as u64
                ));
                return Ok(out);
            }
            chunk.update(&*piece);
            if sum_whole {
                whole.update(&*piece);
            }
            at += piece.len();
        }
        if format!("{:x}", chunk.finalize()) != *sum {
            out.problem = Some(format!(
                "{what} does not match the checksum recorded when it was written"
            ));
            return Ok(out);
        }
        out.rows = b;
        out.chunks = i + 1;
    }
    if out.rows < rows {
        out.problem = Some(format!(
            "the record counts {rows} rows but checksums only {} of them",
            out.rows
        ));
    } else if sum_whole
        && head == header(dtype, rows, Some(cols))
        && len == (HEADER_LEN + rows * row_bytes) as u64
    {
        out.whole = Some((len, format!("{:x}", whole.finalize())));
    }
    Ok(out)
}

/// A memory-mapped matrix from an `.npy` file.
pub struct NpyMatrix {
    map: Mmap,
    pub header: NpyHeader,
    path: PathBuf,
    /// Whether the file holds more than half of this machine's memory (decided on first use).
    beyond_memory: std::sync::OnceLock<bool>,
}

/// Opens an `.npy` file and reads its header, checking that the file holds exactly the bytes the
/// header needs (a truncated or padded file is refused); returns the file and the header.
pub fn open_checked(path: &Path) -> Result<(File, NpyHeader)> {
    let mut f = File::open(path).at(path)?;
    let mut head = Vec::with_capacity(512);
    (&mut f)
        .take((12 + MAX_HEADER_LEN) as u64)
        .read_to_end(&mut head)
        .at(path)?;
    let header = parse_header(&head, path)?;
    let need = header.file_bytes();
    let have = f.metadata().at(path)?.len();
    if have != need {
        return Err(Error::invalid(
            path,
            None,
            format!(
                "the file holds {have} bytes but its header ({} x {} {:?}) needs {need}: it is truncated or damaged",
                header.rows, header.cols, header.dtype
            ),
        ));
    }
    Ok((f, header))
}

/// Reads an `.npy` header from the start of a stream (a pipe: no seeking, no size to check), leaving
/// the stream at the first data byte. `name` names the stream in errors. Reads (and allocates) no
/// more than the header's declared length, itself at most [`MAX_HEADER_LEN`]; the shape is not
/// checked against anything (the caller bounds what it allocates for it).
pub fn read_stream_header(r: &mut impl Read, name: &Path) -> Result<NpyHeader> {
    let bad = |m: &str| Error::invalid(name, None, format!("not a usable .npy stream: {m}"));
    let mut head = vec![0u8; 10];
    let got = read_up_to(r, &mut head).at(name)?;
    if got == 0 {
        return Err(Error::invalid(
            name,
            None,
            "no .npy data: the stream is empty (the program writing it wrote nothing, or nothing \
             was piped in); write the matrix into it (`np.save(sys.stdout.buffer, x)`) or give \
             the .npy file itself",
        ));
    }
    head.truncate(got);
    let truncated = |at: usize| {
        bad(&format!(
            "the stream ended within the header, after {at} bytes: the program writing it \
             stopped early"
        ))
    };
    let mut layout = preamble(&head).map_err(|m| bad(&m))?;
    if layout.is_none() && got == 10 {
        // Versions 2.0 and 3.0 give the header's length in 4 bytes, not 2.
        head.resize(12, 0);
        let more = read_up_to(r, &mut head[10..]).at(name)?;
        head.truncate(10 + more);
        layout = preamble(&head).map_err(|m| bad(&m))?;
    }
    let (start, len) = layout.ok_or_else(|| truncated(head.len()))?;
    head.resize(start + len, 0);
    let got = read_up_to(r, &mut head[start..]).at(name)?;
    if got < len {
        return Err(truncated(start + got));
    }
    parse_header(&head, name)
}

impl NpyMatrix {
    pub fn open(path: &Path) -> Result<Self> {
        let (f, header) = open_checked(path)?;
        // Safety: the file is opened read-only; the index folder is not modified while it is searched.
        let map = unsafe { Mmap::map(&f) }.at(path)?;
        Ok(NpyMatrix {
            map,
            header,
            path: path.to_path_buf(),
            beyond_memory: std::sync::OnceLock::new(),
        })
    }

    /// The file the matrix was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the kernel to read the file ahead: it is about to be read from start to end.
    pub fn advise_sequential(&self) {
        let _ = self.map.advise(memmap2::Advice::Sequential);
    }

    /// Asks the kernel to start reading rows `[start, end)` now (the next block of a pass), so that
    /// the disk works while the current block is scored.
    pub fn prefetch_rows(&self, start: usize, end: usize) {
        if let Some((from, len)) = self.byte_range(start, end) {
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, from, len);
        }
    }

    /// Whether the matrix holds more than half of this machine's memory (Linux's `MemTotal`; false
    /// where that is unknown). A pass over such a matrix releases each block once read
    /// ([`Self::release_rows`]), so that its resident memory stays one block per worker.
    pub fn exceeds_half_of_memory(&self) -> bool {
        *self.beyond_memory.get_or_init(|| {
            crate::memory::total_memory().is_some_and(|t| self.map.len() as u64 > t / 2)
        })
    }

    /// Takes the matrix as larger than memory (its disk paths: rows asked for ahead, blocks released
    /// once read), whatever its size, for tests of those paths.
    #[cfg(test)]
    pub(crate) fn assume_beyond_memory(&self) {
        let _ = self.beyond_memory.set(true);
    }

    /// Asks the kernel to start reading each of `rows` now, all together, so that the disk serves
    /// them in parallel instead of one page fault at a time when they are read next.
    pub fn prefetch_row_list(&self, rows: &[u32]) {
        for &r in rows {
            self.prefetch_rows(r as usize, r as usize + 1);
        }
    }

    fn byte_range(&self, start: usize, end: usize) -> Option<(usize, usize)> {
        let row = self.cols() * self.header.dtype.size();
        let from = self.header.data_offset + start * row;
        let len = end.saturating_sub(start) * row;
        (len > 0 && from + len <= self.map.len()).then_some((from, len))
    }

    /// Drops rows `[start, end)` from this process's resident memory once a one-time pass has read
    /// them (the graph build's code pass over a matrix larger than memory): the kernel keeps them in
    /// its page cache if it has room, and a later read faults them back in from there or the file.
    pub fn release_rows(&self, start: usize, end: usize) {
        let Some((from, len)) = self.byte_range(start, end) else {
            return;
        };
        // Safety: the map is a read-only, shared map of a file: MADV_DONTNEED only unmaps its pages,
        // and the next access reads the same bytes from the page cache or the file; no memory this
        // process wrote is discarded.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, len)
        };
    }

    pub fn rows(&self) -> usize {
        self.header.rows
    }

    pub fn cols(&self) -> usize {
        self.header.cols
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map[self.header.data_offset..]
    }

    /// The f32 rows `[start, end)`, converted from f16 when needed. For f32 files whose data is 4-byte
    /// aligned (always, with this crate's header), this borrows the map without copying.
    pub fn rows_f32(&self, start: usize, end: usize) -> std::borrow::Cow<'_, [f32]> {
        let c = self.cols();
        let sz = self.header.dtype.size();
        let bytes = &self.bytes()[start * c * sz..end * c * sz];
        match self.header.dtype {
            Dtype::F32 => match bytemuck_f32(bytes) {
                Some(s) => std::borrow::Cow::Borrowed(s),
                None => std::borrow::Cow::Owned(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
            },
            Dtype::F16 => std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            ),
        }
    }
}

/// Views little-endian f32 bytes as `&[f32]` when aligned (x86-64 and aarch64 are little-endian).
fn bytemuck_f32(bytes: &[u8]) -> Option<&[f32]> {
    if cfg!(target_endian = "little")
        && (bytes.as_ptr() as usize).is_multiple_of(4)
        && bytes.len().is_multiple_of(4)
    {
        // Safety: alignment and length checked; every bit pattern is a valid f32.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) })
    } else {
        None
    }
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_fixed_length() {
        for rows in [0, 7, 123_456_789] {
            let h = header(Dtype::F32, rows, Some(768));
            assert_eq!(h.len(), HEADER_LEN);
            let p = parse_header(&h, Path::new("x.npy")).unwrap();
            assert_eq!(
                (p.rows, p.cols, p.dtype, p.data_offset),
                (rows, 768, Dtype::F32, HEADER_LEN)
            );
        }
    }

    /// A header as numpy writes it (format 1.0, padded so the data starts at a multiple of 64).
    fn npy(dict: &str) -> Vec<u8> {
        let mut d = dict.to_string();
        while !(10 + d.len() + 1).is_multiple_of(64) {
            d.push(' ');
        }
        d.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((d.len() as u16).to_le_bytes());
        b.extend(d.as_bytes());
        b
    }

    fn parse(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
        parse_header(bytes, Path::new("x.npy")).map_err(|e| e.to_string())
    }

    #[test]
    fn headers_parse_in_any_key_order_and_spacing() {
        let want = |rows, cols, ndim, dtype| NpyHeader {
            dtype,
            rows,
            cols,
            ndim,
            data_offset: 0,
        };
        for (dict, h) in [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }",
                want(3, 5, 2, Dtype::F32),
            ),
            (
                "{'shape':(3,5),'descr':'<f2','fortran_order':False}",
                want(3, 5, 2, Dtype::F16),
            ),
            (
                "{\"fortran_order\"\t:\nFalse ,'shape': ( 7 , ) ,u'descr' : \"<f4\" , }",
                want(7, 1, 1, Dtype::F32),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 5L)}",
                want(3, 5, 2, Dtype::F32),
            ),
        ] {
            let bytes = npy(dict);
            let h = NpyHeader {
                data_offset: bytes.len(),
                ..h
            };
            assert_eq!(parse(&bytes), Ok(h), "{dict}");
        }
        // Versions 2.0 and 3.0: a 4-byte length.
        for v in [2u8, 3] {
            let d = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 9), }\n";
            let mut b = vec![0x93, b'N', b'U', b'M', b'P', b'Y', v, 0];
            b.extend((d.len() as u32).to_le_bytes());
            b.extend(d.as_bytes());
            let h = parse(&b).unwrap();
            assert_eq!((h.rows, h.cols, h.data_offset), (2, 9, b.len()));
        }
    }

    #[test]
    fn fortran_order_is_refused_however_it_is_spaced() {
        for dict in [
            "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 5), }",
            "{'descr':'<f4','fortran_order':True,'shape':(3,5)}",
            "{'descr': '<f4', 'fortran_order':\tTrue, 'shape': (3, 5)}",
        ] {
            let e = parse(&npy(dict)).unwrap_err();
            assert!(e.contains("x.npy") && e.contains("Fortran"), "{dict}: {e}");
        }
    }

    #[test]
    fn shapes_whose_bytes_overflow_are_refused() {
        for shape in [
            "(4611686018427387904, 4)",
            "(18446744073709551615, 18446744073709551615)",
            "(4294967296, 4294967296)",
        ] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}}}");
            let e = parse(&npy(&dict)).unwrap_err();
            assert!(e.contains("more bytes than any file holds"), "{shape}: {e}");
        }
        let e = parse(&npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551616, 1)}",
        ))
        .unwrap_err();
        assert!(e.contains("larger than 2^64 - 1"), "{e}");
        // A file whose header wraps to "no data needed" is refused when opened, not mapped.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wrap.npy");
        std::fs::write(
            &p,
            npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}"),
        )
        .unwrap();
        let e = NpyMatrix::open(&p).err().unwrap().to_string();
        assert!(e.contains("wrap.npy") && e.contains("more bytes"), "{e}");
    }

    /// Every prefix of a good header, and every header with one byte changed, is parsed or refused
    /// with an error: never a panic, never a huge allocation.
    #[test]
    fn damaged_headers_never_panic() {
        let good = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }");
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "a prefix of {n} bytes");
        }
        for i in 0..good.len() {
            for b in [
                0u8, b'(', b')', b'{', b'}', b',', b'\'', b'9', b'-', 0xff, b'\\',
            ] {
                let mut h = good.clone();
                h[i] = b;
                let _ = parse(&h);
            }
        }
        let deep = format!("{{'shape': {}}}", "(".repeat(10_000));
        assert!(parse(&npy(&deep)).unwrap_err().contains("too deeply"));
        let mut long = b"\x93NUMPY\x02\x00".to_vec();
        long.extend(u32::MAX.to_le_bytes());
        assert!(parse(&long).unwrap_err().contains("4294967295 bytes long"));
    }

    #[test]
    fn streams_say_what_is_missing() {
        let read = |bytes: &[u8]| {
            read_stream_header(&mut &bytes[..], Path::new("standard input"))
                .map_err(|e| e.to_string())
        };
        let e = read(b"").unwrap_err();
        assert!(e.contains("no .npy data") && e.contains("empty"), "{e}");
        let good = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }");
        for n in 1..good.len() {
            let e = read(&good[..n]).unwrap_err();
            assert!(e.contains("ended within the header"), "{n}: {e}");
        }
        let mut r = &[good.clone(), vec![7u8; 4]].concat()[..];
        let h = read_stream_header(&mut r, Path::new("-")).unwrap();
        assert_eq!((h.rows, h.cols), (3, 5));
        assert_eq!(r, &[7u8; 4], "the stream is left at the data");
    }

    #[test]
    fn truncated_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.npy");
        write_f32(&p, &[1.0; 12], 3, 4).unwrap();
        let m = NpyMatrix::open(&p).unwrap();
        assert_eq!(&m.rows_f32(1, 2)[..], &[1.0; 4]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let e = NpyMatrix::open(&p).err().unwrap().to_string();
        assert!(e.contains("v.npy") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn appended_chunks_are_checked_against_their_sums() {
        let dir = tempfile::tempdir().unwrap();
        let (part, done) = (dir.path().join("v.npy.partial"), dir.path().join("v.npy"));
        let rows: Vec<f32> = (0..30).map(|i| i as f32 / 7.0).collect();
        // 10 rows of 3, in chunks of 4 rows: 4 + 4 + 2.
        let mut a = NpyAppender::create(&part, Dtype::F32, 3).unwrap();
        let sums: Vec<String> = [0..12, 12..24, 24..30]
            .into_iter()
            .map(|r| a.append_f32(&rows[r]).unwrap())
            .collect();
        // A value the dtype cannot hold is refused, and nothing is written.
        let e = a.append_f32(&[1.0, f32::NAN, 2.0]).unwrap_err().to_string();
        assert!(
            e.contains("row 10") && e.contains("NaN") && e.contains("v.npy.partial"),
            "{e}"
        );
        a.finish(&done).unwrap();
        let check =
            |p: &Path, rows, whole| check_chunks(p, Dtype::F32, 3, 4, rows, &sums, whole).unwrap();
        let c = check(&done, 10, true);
        let (size, sha) = crate::store::manifest::sha256_file(&done).unwrap();
        assert_eq!(
            (c.rows, c.chunks, c.problem, c.whole),
            (10, 3, None, Some((size, sha)))
        );
        let good = std::fs::read(&done).unwrap();
        // A damaged header: every chunk good, but the file is not the finished one.
        let mut bytes = good.clone();
        bytes[20] ^= 1;
        std::fs::write(&done, &bytes).unwrap();
        let c = check(&done, 10, true);
        assert_eq!((c.rows, c.problem, c.whole), (10, None, None));
        // Cut short in chunk 3; a byte of chunk 2 changed; the record short of the rows it counts.
        std::fs::write(&done, &good[..good.len() - 4]).unwrap();
        let c = check(&done, 10, false);
        assert_eq!((c.rows, c.chunks), (8, 2));
        assert!(c
            .problem
            .unwrap()
            .contains("chunk 3 (rows 8..10) is cut short"));
        let mut bytes = good.clone();
        bytes[HEADER_LEN + 5 * 12] ^= 1;
        std::fs::write(&done, &bytes).unwrap();
        let c = check(&done, 10, false);
        assert_eq!((c.rows, c.chunks), (4, 1));
        assert!(c
            .problem
            .unwrap()
            .contains("chunk 2 (rows 4..8) does not match"));
        let c = check_chunks(&done, Dtype::F32, 3, 4, 10, &sums[..2], false).unwrap();
        assert_eq!(c.rows, 4);
        // Continued after its good rows, the file is the same as one written in one go.
        let mut a = NpyAppender::continue_after(&done, Dtype::F32, 3, 4).unwrap();
        a.append_f32(&rows[12..24]).unwrap();
        a.append_f32(&rows[24..30]).unwrap();
        a.finish(&part).unwrap();
        assert!(std::fs::read(&part).unwrap() == good);
        // In half precision, a value past its range would be infinite: refused too.
        let h = dir.path().join("h.npy.partial");
        let mut a = NpyAppender::create(&h, Dtype::F16, 1).unwrap();
        let e = a.append_f32(&[0.5, 1e6]).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("F16"), "{e}");
    }
}
