//! `import`: an index from vectors made elsewhere (SimLM's PyTorch encoder, Tevatron, Pyserini,
//! numpy): an f32 or f16 `.npy` matrix in C order, ids one a line (or the row numbers), optionally the
//! collection behind them for passage text. Such an index has no model in its manifest and answers
//! pre-encoded queries only.
//!
//! The matrix is copied into a new generation in large sequential reads, every value checked to be
//! finite on the way, and checksummed in the same pass; the commit makes it the index, so a stop or an
//! error leaves the folder as it was.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::writer::{self, Writer};
use super::Progress;
use crate::corpus::ReadOptions;
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::search::hnsw::HnswParams;
use crate::store::layout::{self, PARTIAL, VECTORS};
use crate::store::manifest::{FileSum, Imported, Manifest, Sources, FORMAT_VERSION};
use crate::store::npy::{self, Dtype, NpyAppender};

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The `.npy` matrix (rows x dimensions, f32 or f16, C order).
    pub vectors: PathBuf,
    /// Ids one a line, one per row; default: the collection's ids, or else the row numbers.
    pub ids: Option<PathBuf>,
    /// The collection the rows encode, in the same order: its passages are shown with results.
    pub collection: Option<PathBuf>,
    pub out: PathBuf,
    /// `None`: no graph.
    pub hnsw: Option<HnswParams>,
    /// Replace a finished index.
    pub force: bool,
}

/// Bytes read and written per step of the copy.
const BLOCK_BYTES: usize = 16 << 20;

/// The most dimensions a streamed matrix may have. A file's header is checked against the file's
/// length; a stream's cannot be, so its row size is bounded before anything is allocated for it
/// (the widest embedding models give 4,096 to 8,192 dimensions).
pub const MAX_STREAM_DIM: usize = 65_536;

/// Imports a matrix (see the module's notes).
pub fn import(opts: &ImportOptions, progress: &dyn Progress) -> Result<Manifest> {
    if let Some(params) = &opts.hnsw {
        params.validate()?;
    }
    // `-` (standard input) or a named pipe: the matrix arrives as a stream, from an encoder or a
    // generator, and is never stored twice.
    let stdin = opts.vectors.as_os_str() == "-";
    let src: &Path = if stdin {
        Path::new("standard input")
    } else {
        &opts.vectors
    };
    let (input, header, stream): (Box<dyn Read>, npy::NpyHeader, bool) = if stdin || is_fifo(src) {
        let mut r: Box<dyn Read> = if stdin {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::fs::File::open(src).at(src)?)
        };
        let header = npy::read_stream_header(&mut r, src)?;
        (r, header, true)
    } else {
        let (mut file, header) = npy::open_checked(src)?;
        file.seek(SeekFrom::Start(header.data_offset as u64))
            .at(src)?;
        (Box::new(file), header, false)
    };
    let (rows, dim) = (header.rows, header.cols);
    if header.ndim != 2 || rows == 0 || dim == 0 {
        return Err(Error::invalid(
            src,
            None,
            format!(
                "holds an array of shape {}; expected a 2-D array with one row per passage \
                 (rows x dimensions, at least one of each)",
                if header.ndim == 2 {
                    format!("({rows}, {dim})")
                } else {
                    format!("({rows},)")
                }
            ),
        ));
    }
    if stream && dim > MAX_STREAM_DIM {
        return Err(Error::invalid(
            src,
            None,
            format!(
                "the header gives {dim} dimensions a row, more than the {MAX_STREAM_DIM} a stream \
                 may have (its header cannot be checked against a file's length): the stream is \
                 damaged, or, if the shape is right, save the matrix to a file and import that"
            ),
        ));
    }
    // `parse_header` checked that this does not overflow; for a file, it is the file's length.
    let size = header.file_bytes();

    let w = Writer::open(&opts.out)?;
    match w.current() {
        Ok(Some(_)) if !opts.force => return Err(writer::finished_index_there(&opts.out)),
        Err(e) if !opts.force => return Err(e),
        _ => {}
    }
    let (ids, sources, ids_sum) = ids_and_sources(opts, rows, progress)?;

    let (gen, gen_dir) = w.new_generation()?;
    writer::discard_on_error(&gen_dir, || {
        let vectors = copy_matrix(src, input, &header, stream, &gen_dir, progress)?;
        // Row numbers are made once the rows are there: a stream's header alone is not trusted
        // with an allocation of its row count.
        let (ids, offsets) =
            ids.unwrap_or_else(|| ((0..rows).map(|r| r.to_string()).collect(), vec![0; rows]));
        crate::store::ids::write(&gen_dir, &ids, &offsets)?;
        if let Some(params) = opts.hnsw {
            writer::build_graph(&gen_dir, params, progress)?;
        }
        progress.message("checksumming the index");
        let files = writer::checksum_files(
            &gen_dir,
            &writer::index_files(opts.hnsw.is_some()),
            &[vectors],
        )?;
        let mut manifest = Manifest {
            format_version: FORMAT_VERSION,
            model: None,
            input_format: None,
            pooling: None,
            precision: None,
            dim,
            dtype: header.dtype,
            count: rows,
            shard: None,
            hnsw: opts.hnsw,
            sources,
            imported: Some(Imported {
                vectors: if stdin { "-".into() } else { absolute(src) },
                size,
                ids: ids_sum,
            }),
            settings: String::new(),
            data: layout::generation_name(gen),
            files,
            checksum: String::new(),
        };
        w.commit(&mut manifest)?;
        Ok(manifest)
    })
}

#[cfg(unix)]
fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

#[cfg(not(unix))]
fn is_fifo(_: &Path) -> bool {
    false
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The ids (and collection offsets) of the rows: from `--ids` or the collection (`None`: the row
/// numbers); when both an ids file and a collection are given they must list the same ids in the
/// same order.
#[allow(clippy::type_complexity)]
fn ids_and_sources(
    opts: &ImportOptions,
    rows: usize,
    progress: &dyn Progress,
) -> Result<(
    Option<(Vec<String>, Vec<u64>)>,
    Option<Sources>,
    Option<FileSum>,
)> {
    let listed = match &opts.ids {
        Some(p) => {
            let ids = crate::corpus::read_ids(p, "passage")?;
            if ids.len() != rows {
                return Err(Error::invalid(
                    p,
                    None,
                    format!(
                        "{} ids for the {rows} rows of {}: give one id a line for each row, in row order",
                        ids.len(),
                        opts.vectors.display()
                    ),
                ));
            }
            Some((ids, FileSum::of(p, &absolute(p))?))
        }
        None => None,
    };
    let Some(coll) = &opts.collection else {
        return Ok(match listed {
            Some((ids, sum)) => (Some((ids, vec![0; rows])), None, Some(sum)),
            None => (None, None, None),
        });
    };
    let scan = super::scan(coll, &ReadOptions::default(), progress)?;
    if scan.ids.len() != rows {
        return Err(Error::invalid(
            coll,
            None,
            format!(
                "{} passages for the {rows} rows of {}: the collection must hold exactly the encoded passages, in row order",
                scan.ids.len(),
                opts.vectors.display()
            ),
        ));
    }
    if let Some((ids, _)) = &listed {
        if let Some(i) = (0..rows).find(|&i| ids[i] != scan.ids[i]) {
            return Err(Error::invalid(
                opts.ids.as_ref().expect("listed ids have a file"),
                Some(i + 1),
                format!(
                    "id `{}` differs from the collection's id `{}` for row {i}: the ids and the collection must be in the same order",
                    ids[i], scan.ids[i]
                ),
            ));
        }
    }
    progress.message("checksumming the collection");
    let sources = Sources {
        collection: FileSum::of(coll, &absolute(coll))?,
        titles: None,
        fix_encoding: false,
        skipped_lines: 0,
    };
    Ok((
        Some((scan.ids, scan.offsets)),
        Some(sources),
        listed.map(|(_, s)| s),
    ))
}

/// Copies the matrix's rows into `gen_dir`'s `vectors.npy`, refusing non-finite values, and returns
/// the new file's checksum (computed while writing: the header for the final row count is known).
fn copy_matrix(
    src: &Path,
    mut f: Box<dyn Read>,
    header: &npy::NpyHeader,
    stream: bool,
    gen_dir: &Path,
    progress: &dyn Progress,
) -> Result<FileSum> {
    let (rows, dim, dtype) = (header.rows, header.cols, header.dtype);
    let row_bytes = dim * dtype.size();
    let mut out = NpyAppender::create(&gen_dir.join(PARTIAL), dtype, dim)?;
    let mut sha = Sha256::new();
    sha.update(npy::header(dtype, rows, Some(dim)));
    let block_rows = (BLOCK_BYTES / row_bytes).max(1);
    let mut buf = vec![0u8; block_rows * row_bytes];
    progress.stage("importing", Some(rows as u64));
    let mut done = 0;
    while done < rows {
        let n = block_rows.min(rows - done);
        let bytes = &mut buf[..n * row_bytes];
        if let Err(e) = f.read_exact(bytes) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                return Err(Error::invalid(
                    src,
                    None,
                    format!(
                        "the data ended within rows {done}..{} of the header's {rows}: the file is \
                         truncated, or the program writing the stream stopped early",
                        done + n
                    ),
                ));
            }
            return Err(Error::io(src, e));
        }
        if let Some(bad) = first_non_finite(bytes, dtype) {
            let row = done + bad / dim;
            return Err(Error::invalid(
                src,
                None,
                format!(
                    "row {row} (0-based) has a value that is not a finite number in dimension {}: \
                     the vectors are damaged, or the encoder overflowed (f16?); fix or re-encode them",
                    bad % dim
                ),
            ));
        }
        sha.update(&*bytes);
        out.append_bytes(bytes)?;
        done += n;
        progress.set(done as u64);
    }
    if stream && f.read(&mut [0u8; 1]).at(src)? != 0 {
        return Err(Error::invalid(
            src,
            None,
            format!(
                "more data follows the header's {rows} x {dim} values: the header's shape is wrong"
            ),
        ));
    }
    progress.finish_stage();
    failpoint::hit("matrix-finish").at(gen_dir.join(PARTIAL))?;
    out.finish(&gen_dir.join(VECTORS))?;
    let size = (npy::HEADER_LEN as u64).saturating_add(header.data_bytes());
    Ok(FileSum {
        path: VECTORS.to_string(),
        size,
        sha256: format!("{:x}", sha.finalize()),
    })
}

/// The index of the first value in `bytes` (little-endian `dtype`) that is NaN or infinite.
fn first_non_finite(bytes: &[u8], dtype: Dtype) -> Option<usize> {
    match dtype {
        // The exponent bits all set: NaN or infinity.
        Dtype::F32 => {
            let exp = 0x7f80_0000u32;
            let any = bytes.chunks_exact(4).fold(false, |acc, b| {
                acc | (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & exp == exp)
            });
            if !any {
                return None;
            }
            bytes
                .chunks_exact(4)
                .position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & exp == exp)
        }
        Dtype::F16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_found() {
        let mut v: Vec<u8> = [1.0f32, -2.0, 0.0, f32::MAX]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&v, Dtype::F32), None);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            v[8..12].copy_from_slice(&bad.to_le_bytes());
            assert_eq!(first_non_finite(&v, Dtype::F32), Some(2));
        }
        let h: Vec<u8> = [1.0f32, 65504.0, f32::INFINITY]
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&h, Dtype::F16), Some(2));
        assert_eq!(first_non_finite(&h[..4], Dtype::F16), None);
    }
}
