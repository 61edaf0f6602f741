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

pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |m: &str| Error::invalid(path, None, format!("not a usable .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("the magic bytes are missing"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("format version {v} is not supported"))),
    };
    let dict = bytes
        .get(start..start + len)
        .ok_or_else(|| bad("the header is truncated"))?;
    let dict = std::str::from_utf8(dict).map_err(|_| bad("the header is not text"))?;
    let dtype = if dict.contains("'<f4'") {
        Dtype::F32
    } else if dict.contains("'<f2'") {
        Dtype::F16
    } else {
        let descr = dict
            .split("'descr':")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("?")
            .trim();
        return Err(bad(&format!(
            "dtype {descr} is not little-endian float32 or float16: save the array with \
             `np.save(path, x.astype(np.float32))`"
        )));
    };
    if dict.contains("'fortran_order': True") {
        return Err(bad(
            "the array is in Fortran (column-major) order: save it with \
             `np.save(path, np.ascontiguousarray(x))`",
        ));
    }
    let shape = dict
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(|s| s.trim().trim_start_matches('('))
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let (rows, cols) = match dims[..] {
        [r, c] => (r, c),
        [r] => (r, 1),
        _ => {
            return Err(bad(&format!(
                "expected a 2-D array (rows x dimensions), found shape ({shape})"
            )))
        }
    };
    Ok(NpyHeader {
        dtype,
        rows,
        cols,
        ndim: dims.len(),
        data_offset: start + len,
    })
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
    /// Opens `path` to continue after at most `rows` rows, creating it if needed. Only whole rows
    /// that are really in the file count, rounded down to a multiple of `granule`: a file shorter
    /// than `rows` is continued from what it holds, never extended with zeros; bytes past the kept
    /// rows are cut off. The kept rows are not read: a caller that resumes a file a stopped process
    /// wrote checks them first ([`check_chunks`]) and continues with [`NpyAppender::continue_after`].
    pub fn resume(
        path: &Path,
        dtype: Dtype,
        cols: usize,
        rows: usize,
        granule: usize,
    ) -> Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .at(path)?;
        let row_bytes = (cols * dtype.size()) as u64;
        let len = file.metadata().at(path)?.len();
        let mut head = vec![0u8; HEADER_LEN];
        let same_kind = len >= HEADER_LEN as u64
            && read_up_to(&mut file, &mut head).at(path)? == HEADER_LEN
            && parse_header(&head, path)
                .map(|h| h.dtype == dtype && h.cols == cols && h.data_offset == HEADER_LEN)
                .unwrap_or(false);
        let present = if same_kind && row_bytes > 0 {
            ((len - HEADER_LEN as u64) / row_bytes) as usize
        } else {
            0
        };
        let granule = granule.max(1);
        let rows = rows.min(present) / granule * granule;
        Self::keep(file, path, dtype, cols, rows)
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
    let mut head = Vec::with_capacity(4096);
    (&mut f).take(1 << 16).read_to_end(&mut head).at(path)?;
    let header = parse_header(&head, path)?;
    let need = header.data_offset as u64 + (header.rows * header.cols * header.dtype.size()) as u64;
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
/// the stream at the first data byte. `name` names the stream in errors.
pub fn read_stream_header(r: &mut impl Read, name: &Path) -> Result<NpyHeader> {
    let mut head = vec![0u8; 10];
    r.read_exact(&mut head).at(name)?;
    let extra = match head.get(6) {
        Some(2 | 3) => 2,
        _ => 0,
    };
    head.resize(10 + extra, 0);
    r.read_exact(&mut head[10..]).at(name)?;
    let len = if extra == 0 {
        u16::from_le_bytes([head[8], head[9]]) as usize
    } else {
        u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize
    };
    if &head[..6] == b"\x93NUMPY" && len <= 1 << 20 {
        let start = head.len();
        head.resize(start + len, 0);
        r.read_exact(&mut head[start..]).at(name)?;
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

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
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
        let mut a = NpyAppender::resume(&part, Dtype::F32, 3, 0, 1).unwrap();
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
        let mut a = NpyAppender::resume(&h, Dtype::F16, 1, 0, 1).unwrap();
        let e = a.append_f32(&[0.5, 1e6]).unwrap_err().to_string();
        assert!(e.contains("row 1") && e.contains("F16"), "{e}");
    }
}
