//! Corpus readers: MS MARCO `collection.tsv` (`pid<TAB>text`, with an optional titles file
//! `pid<TAB>title` in the same order), JSONL as SimLM/Pyserini (`id`, `title`, `contents`), BEIR
//! (`_id`, `title`, `text`) and the classic collections (`id`, `title`, `text`) write it; each plain or
//! gzip-compressed. Records are streamed: the collection's text is never held in memory at once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::text::Doc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorpusFormat {
    /// `id<TAB>text` per line.
    Tsv,
    /// One JSON object per line.
    Jsonl,
}

impl CorpusFormat {
    /// By extension (`.tsv`, `.txt`, `.jsonl`, `.json`, each optionally `.gz`); otherwise by the first
    /// byte of the first line (`{` means JSONL).
    pub fn detect(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".jsonl") || name.ends_with(".json") {
            return Ok(CorpusFormat::Jsonl);
        }
        if name.ends_with(".tsv") || name.ends_with(".txt") {
            return Ok(CorpusFormat::Tsv);
        }
        let mut first = Vec::new();
        LineReader::open(path)?.next_line(&mut first)?;
        Ok(if first.trim_ascii_start().first() == Some(&b'{') {
            CorpusFormat::Jsonl
        } else {
            CorpusFormat::Tsv
        })
    }
}

/// The UTF-8 byte-order mark some editors (Notepad, Excel's "CSV UTF-8") put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A buffered reader over a file's bytes as they are (decompressed when the file starts with the gzip
/// magic bytes), a leading byte-order mark included.
fn open_raw(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut f = File::open(path).at(path)?;
    let gz = starts_gzip(&mut f).at(path)?;
    f.seek(SeekFrom::Start(0)).at(path)?;
    if gz {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(f),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

/// Drops one leading byte-order mark; returns the reader and the number of bytes dropped (0 or 3).
fn skip_bom(path: &Path, mut r: Box<dyn BufRead + Send>) -> Result<(Box<dyn BufRead + Send>, u64)> {
    let mut head = Vec::with_capacity(BOM.len());
    while head.len() < BOM.len() {
        let buf = r.fill_buf().map_err(|e| read_error(path, Some(1), e))?;
        if buf.is_empty() {
            break;
        }
        if head.is_empty() && buf.len() >= BOM.len() {
            // The usual case: the first read holds the first three bytes.
            if buf.starts_with(BOM) {
                r.consume(BOM.len());
                return Ok((r, BOM.len() as u64));
            }
            return Ok((r, 0));
        }
        let take = (BOM.len() - head.len()).min(buf.len());
        head.extend_from_slice(&buf[..take]);
        r.consume(take);
    }
    if head == BOM {
        Ok((r, BOM.len() as u64))
    } else {
        Ok((Box::new(std::io::Cursor::new(head).chain(r)), 0))
    }
}

/// A buffered reader over a text file, decompressing it when it starts with the gzip magic bytes and
/// without a leading UTF-8 byte-order mark (which would otherwise end up in the first id).
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    Ok(skip_bom(path, open_raw(path)?)?.0)
}

/// The error of a read that failed at `line` (where known): a gzip stream that ends early is named as
/// a truncated file, with the line where reading broke.
fn read_error(path: &Path, line: Option<usize>, e: std::io::Error) -> Error {
    let gz = is_gzip(path).unwrap_or(false);
    let msg = if gz && e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!(
            "the gzip data ends early ({e}): the file looks truncated \
             (an interrupted download or copy); fetch or compress it again"
        )
    } else if gz {
        format!(
            "the gzip data is damaged ({e}): the file looks truncated or corrupted; \
             fetch or compress it again"
        )
    } else {
        format!("reading failed: {e}")
    };
    Error::invalid(path, line, msg)
}

/// Lines of a text file with their numbers and byte offsets, for the readers below.
struct LineReader {
    path: PathBuf,
    r: Box<dyn BufRead + Send>,
    /// Number of the last line read (1-based).
    line: usize,
    /// Byte offset (in the decompressed file, a byte-order mark included) of the next line.
    offset: u64,
}

impl LineReader {
    fn open(path: &Path) -> Result<Self> {
        let (r, bom) = skip_bom(path, open_raw(path)?)?;
        Ok(LineReader {
            path: path.to_path_buf(),
            r,
            line: 0,
            offset: bom,
        })
    }

    /// Reads the next line into `buf` without its line end; returns the line's byte offset, or `None`
    /// at the end of the file.
    fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        buf.clear();
        let n = self
            .r
            .read_until(b'\n', buf)
            .map_err(|e| read_error(&self.path, Some(self.line + 1), e))?;
        if n == 0 {
            return Ok(None);
        }
        let start = self.offset;
        self.offset += n as u64;
        self.line += 1;
        strip_eol(buf);
        Ok(Some(start))
    }
}

/// Whether the file starts with the gzip magic bytes.
pub fn is_gzip(path: &Path) -> Result<bool> {
    starts_gzip(&mut File::open(path).at(path)?).at(path)
}

/// Whether the bytes read next from `f` are the gzip magic bytes.
fn starts_gzip(f: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match f.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == 2 && magic == [0x1f, 0x8b])
}

/// One passage of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub title: Option<String>,
    pub text: String,
    /// Byte offset of the record's line in the (decompressed) collection file.
    pub offset: u64,
    /// 1-based line number in the collection file.
    pub line: usize,
}

/// Repairs latin-1/UTF-8 mojibake: text that was UTF-8, decoded as latin-1 and encoded again as
/// UTF-8 (`/Ë\u{88}waÉª faÉª/` for `/ˈwaɪ faɪ/`). Each maximal run of characters in U+0080..U+00FF is
/// turned back into bytes; where those bytes are valid UTF-8 the run is replaced by their decoding.
/// Text that is not mojibake (a lone `é`, Greek, CJK) is left as it is.
pub fn fix_mojibake(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| ('\u{80}'..='\u{ff}').contains(&c)) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut run: Vec<u8> = Vec::new();
    let mut run_text = String::new();
    let flush = |out: &mut String, run: &mut Vec<u8>, run_text: &mut String| {
        if !run.is_empty() {
            match std::str::from_utf8(run) {
                Ok(fixed) => out.push_str(fixed),
                Err(_) => out.push_str(run_text),
            }
            run.clear();
            run_text.clear();
        }
    };
    for c in s.chars() {
        if ('\u{80}'..='\u{ff}').contains(&c) {
            run.push(c as u32 as u8);
            run_text.push(c);
        } else {
            flush(&mut out, &mut run, &mut run_text);
            out.push(c);
        }
    }
    flush(&mut out, &mut run, &mut run_text);
    std::borrow::Cow::Owned(out)
}

/// Options of a corpus read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub titles: Option<PathBuf>,
    pub fix_encoding: bool,
    /// Skip (and count) malformed lines instead of failing.
    pub skip_bad: bool,
}

/// Streams the records of a collection file.
pub struct CorpusReader {
    path: PathBuf,
    format: CorpusFormat,
    lines: LineReader,
    titles: Option<LineReader>,
    opts: ReadOptions,
    buf: Vec<u8>,
    /// Malformed lines skipped under `skip_bad`.
    pub skipped: usize,
}

impl CorpusReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self> {
        let format = CorpusFormat::detect(path)?;
        let titles = match &opts.titles {
            Some(t) => Some(LineReader::open(t)?),
            None => None,
        };
        Ok(CorpusReader {
            path: path.to_path_buf(),
            format,
            lines: LineReader::open(path)?,
            titles,
            opts,
            buf: Vec::new(),
            skipped: 0,
        })
    }

    fn next_title(&mut self, id: &str) -> Result<Option<String>> {
        let Some(t) = &mut self.titles else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        loop {
            if t.next_line(&mut buf)?.is_none() {
                return Err(Error::invalid(
                    &t.path,
                    None,
                    format!(
                        "the titles file ends after line {}, before the title of passage `{id}` (line {} of {}); it must list the collection's ids in the same order",
                        t.line,
                        self.lines.line,
                        self.path.display()
                    ),
                ));
            }
            if !buf.is_empty() {
                break;
            }
        }
        let tline = t.line;
        let line = String::from_utf8(buf)
            .map_err(|_| Error::invalid(&t.path, Some(tline), "not valid UTF-8"))?;
        let (tid, title) = line.split_once('\t').unwrap_or((line.as_str(), ""));
        if tid != id {
            return Err(Error::invalid(
                &t.path,
                Some(tline),
                format!("title id `{tid}` does not match passage id `{id}` (line {} of {}): the titles file must list the same ids in the same order", self.lines.line, self.path.display()),
            ));
        }
        Ok(Some(title.to_string()))
    }
}

/// What is wrong with an id, if anything: ids are written one a line to docids.txt and as a
/// whitespace-separated column of run files, so whitespace or control characters in one would break
/// those files (or make an id that cannot be found again).
pub fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("empty id".into());
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "id {id:?} contains the control character U+{:04X}; ids are written one a line to \
             docids.txt and to run files, so they must be printable: fix the id in the file",
            c as u32
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_whitespace()) {
        return Err(format!(
            "id {id:?} contains whitespace (U+{:04X}); run files separate their columns by \
             whitespace, so such an id would break them: remove it from the id in the file",
            c as u32
        ));
    }
    Ok(())
}

/// The (id, title, text) of one collection line, or what is wrong with it.
fn parse_line(
    format: CorpusFormat,
    line: &[u8],
) -> std::result::Result<(String, Option<String>, String), String> {
    let line = std::str::from_utf8(line)
        .map_err(|_| "not valid UTF-8 (pass --skip-bad to skip such lines)".to_string())?;
    match format {
        CorpusFormat::Tsv => {
            let (id, text) = line
                .split_once('\t')
                .ok_or_else(|| "no tab: expected `id<TAB>text`".to_string())?;
            if id.trim().is_empty() {
                return Err("missing id before the tab".into());
            }
            check_id(id).map_err(skip_hint)?;
            Ok((id.to_string(), None, text.to_string()))
        }
        CorpusFormat::Jsonl => {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
            let obj = v.as_object().ok_or("expected a JSON object")?;
            let id = ["_id", "id", "docid", "doc_id"]
                .iter()
                .find_map(|k| obj.get(*k))
                .ok_or("missing id (expected one of `_id`, `id`, `docid`)")?;
            let id = match id {
                Value::String(s) if !s.is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(format!(
                        "bad id {id}: expected a non-empty string or a number"
                    ))
                }
            };
            check_id(&id).map_err(skip_hint)?;
            let text = ["text", "contents", "body"]
                .iter()
                .find_map(|k| obj.get(*k))
                .ok_or("missing text (expected `text` or `contents`)")?;
            let text = text
                .as_str()
                .ok_or("the text field must be a string")?
                .to_string();
            let title = match obj.get("title") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err("the title field must be a string".into()),
            };
            Ok((id, title, text))
        }
    }
}

fn skip_hint(msg: String) -> String {
    format!("{msg} (or pass --skip-bad to skip such lines)")
}

/// Applies `--fix-encoding` to a record's title and text.
fn repair(title: Option<String>, text: String, fix_encoding: bool) -> (Option<String>, String) {
    if !fix_encoding {
        return (title, text);
    }
    (
        title.map(|t| fix_mojibake(&t).into_owned()),
        fix_mojibake(&text).into_owned(),
    )
}

fn strip_eol(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
}

impl Iterator for CorpusReader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let start = match self.lines.next_line(&mut buf) {
                Ok(Some(start)) => start,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                self.buf = buf;
                continue;
            }
            let parsed = parse_line(self.format, &buf);
            self.buf = buf;
            let (id, title, text) = match parsed {
                Ok(p) => p,
                Err(msg) => {
                    if self.opts.skip_bad {
                        self.skipped += 1;
                        // Keep a titles file in step with the skipped line.
                        if let Some(t) = &mut self.titles {
                            let mut skip = Vec::new();
                            if let Err(e) = t.next_line(&mut skip) {
                                return Some(Err(e));
                            }
                        }
                        continue;
                    }
                    return Some(Err(Error::invalid(&self.path, Some(self.lines.line), msg)));
                }
            };
            let title = match self.next_title(&id) {
                Ok(Some(t)) => Some(t),
                Ok(None) => title,
                Err(e) => return Some(Err(e)),
            };
            let (title, text) = repair(title, text, self.opts.fix_encoding);
            return Some(Ok(Record {
                id,
                title,
                text,
                offset: start,
                line: self.lines.line,
            }));
        }
    }
}

/// Reads the record whose line starts at `offset` (seeking in a plain file, decompressing up to it in
/// a gzip file). Titles from a separate titles file are not looked up here.
pub fn read_record_at(path: &Path, offset: u64, fix_encoding: bool) -> Result<Record> {
    let format = CorpusFormat::detect(path)?;
    // Offsets count a leading byte-order mark, so the raw (decompressed) bytes are addressed here.
    let mut r: Box<dyn BufRead + Send> = if is_gzip(path)? {
        let mut r = open_raw(path)?;
        std::io::copy(&mut r.by_ref().take(offset), &mut std::io::sink())
            .map_err(|e| read_error(path, None, e))?;
        r
    } else {
        let mut f = File::open(path).at(path)?;
        f.seek(SeekFrom::Start(offset)).at(path)?;
        Box::new(BufReader::new(f))
    };
    if offset == 0 {
        r = skip_bom(path, r)?.0;
    }
    let mut buf = Vec::new();
    r.read_until(b'\n', &mut buf)
        .map_err(|e| read_error(path, None, e))?;
    strip_eol(&mut buf);
    let (id, title, text) = parse_line(format, &buf).map_err(|m| {
        Error::invalid(
            path,
            None,
            format!("at byte {offset}: {m} (has the collection changed?)"),
        )
    })?;
    let (title, text) = repair(title, text, fix_encoding);
    Ok(Record {
        id,
        title,
        text,
        offset,
        line: 0,
    })
}

/// One query of a queries file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: String,
    pub text: String,
    /// 1-based line number in the queries file.
    pub line: usize,
}

/// Reads a queries file: `qid<TAB>text` lines (MS MARCO) or JSON objects with `_id` (or `id`, `qid`)
/// and `text` (or `query`) as BEIR writes them; plain or gzip-compressed; blank lines are skipped.
/// Ids that would break a run file (whitespace, control characters, empty) and duplicate ids are
/// refused with their line numbers, as is a file without queries.
pub fn read_queries(path: &Path) -> Result<Vec<Query>> {
    let mut r = LineReader::open(path)?;
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut buf = Vec::new();
    while r.next_line(&mut buf)?.is_some() {
        let no = r.line;
        let bad = |msg: String| Error::invalid(path, Some(no), msg);
        let line = std::str::from_utf8(&buf).map_err(|_| bad("not valid UTF-8".into()))?;
        if line.trim().is_empty() {
            continue;
        }
        let (id, text) = if line.trim_start().starts_with('{') {
            let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("bad JSON: {e}")))?;
            let id = v
                .get("_id")
                .or_else(|| v.get("id"))
                .or_else(|| v.get("qid"));
            let id = match id {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None => return Err(bad("missing query id (`_id`, `id` or `qid`)".into())),
                Some(other) => {
                    return Err(bad(format!(
                        "bad query id {other}: expected a non-empty string or a number"
                    )))
                }
            };
            let text = v.get("text").or_else(|| v.get("query"));
            let Some(text) = text.and_then(Value::as_str) else {
                return Err(bad("missing `text` (a string)".into()));
            };
            (id, text.to_string())
        } else {
            let Some((id, text)) = line.split_once('\t') else {
                return Err(bad("expected `qid<TAB>text` or a JSON object".into()));
            };
            // Spaces around the id are dropped (as the searcher always did); spaces inside are refused.
            (id.trim().to_string(), text.to_string())
        };
        if id.is_empty() {
            return Err(bad("missing query id".into()));
        }
        check_id(&id).map_err(|m| bad(m.replacen("id ", "query id ", 1)))?;
        if let Some(first) = seen.get(&id) {
            return Err(bad(format!(
                "query id `{id}` appears twice (lines {first} and {no}); a run could not tell the two \
                 queries apart: give each query its own id or remove the repeated line"
            )));
        }
        seen.insert(id.clone(), no);
        out.push(Query { id, text, line: no });
    }
    if out.is_empty() {
        return Err(Error::invalid(
            path,
            None,
            "no queries: expected `qid<TAB>text` lines or JSON objects with `_id` and `text`",
        ));
    }
    Ok(out)
}

/// Reads pre-encoded queries (Pyserini's `--encoded-queries`): an f32 or f16 `.npy` of queries x
/// `dim` (the index's dimension), every value finite, and their ids from `ids` (one a line, one per
/// row) or else the row numbers. Returns the ids and the vectors, row-major.
pub fn read_query_vectors(
    path: &Path,
    ids: Option<&Path>,
    dim: usize,
) -> Result<(Vec<String>, Vec<f32>)> {
    let m = crate::store::npy::NpyMatrix::open(path)?;
    // A shape without columns holds no values whatever its row count, so the row count of such a
    // file is not bounded by its size: it is refused before anything is made per row.
    if m.header.ndim != 2 || m.rows() == 0 || m.cols() == 0 {
        let shape = if m.header.ndim == 2 {
            format!("({}, {})", m.rows(), m.cols())
        } else {
            format!("({},)", m.rows())
        };
        return Err(Error::invalid(
            path,
            None,
            format!(
                "has shape {shape}; expected a 2-D array of queries x dimensions, with at least one query and one dimension"
            ),
        ));
    }
    if m.cols() != dim {
        return Err(Error::invalid(
            path,
            None,
            format!(
                "query vectors of dimension {}, the index holds dimension {dim}: encode the queries with the index's model",
                m.cols()
            ),
        ));
    }
    let vecs = m.rows_f32(0, m.rows()).into_owned();
    if let Some(i) = vecs.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(
            path,
            None,
            format!(
                "row {} (0-based) has a value that is not a finite number in dimension {}: re-encode the queries",
                i / dim,
                i % dim
            ),
        ));
    }
    let qids = match ids {
        Some(p) => {
            let ids = read_ids(p, "query")?;
            if ids.len() != m.rows() {
                return Err(Error::invalid(
                    p,
                    None,
                    format!(
                        "{} ids for the {} rows of {}: give one id a line for each row, in row order",
                        ids.len(),
                        m.rows(),
                        path.display()
                    ),
                ));
            }
            ids
        }
        None => (0..m.rows()).map(|r| r.to_string()).collect(),
    };
    Ok((qids, vecs))
}

/// Reads ids one a line (as `simlm-index import --ids` and `simlm-search batch --query-ids` take
/// them): plain or gzip-compressed, surrounding spaces dropped; blank lines, ids that would break a run
/// file and repeated ids are refused with their line numbers. `what` names the ids in messages.
pub fn read_ids(path: &Path, what: &str) -> Result<Vec<String>> {
    let mut r = LineReader::open(path)?;
    let mut out = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut buf = Vec::new();
    while r.next_line(&mut buf)?.is_some() {
        let no = r.line;
        let bad = |msg: String| Error::invalid(path, Some(no), msg);
        let id = std::str::from_utf8(&buf)
            .map_err(|_| bad("not valid UTF-8".into()))?
            .trim();
        if id.is_empty() {
            return Err(bad(format!(
                "an empty line: the file must hold one {what} id a line, one for each row of the vectors"
            )));
        }
        check_id(id).map_err(|m| bad(m.replacen("id ", &format!("{what} id "), 1)))?;
        if let Some(first) = seen.insert(id.to_string(), no) {
            return Err(bad(format!(
                "{what} id `{id}` appears twice (lines {first} and {no}); every row needs its own id"
            )));
        }
        out.push(id.to_string());
    }
    Ok(out)
}

/// Reads texts to encode, one JSON object a line (`{"text": ..., "title": ...}`, title optional), plain
/// or gzip-compressed; blank lines are skipped.
pub fn read_docs_jsonl(path: &Path) -> Result<Vec<Doc>> {
    let mut r = LineReader::open(path)?;
    let mut docs = Vec::new();
    let mut buf = Vec::new();
    while r.next_line(&mut buf)?.is_some() {
        let no = r.line;
        let line = std::str::from_utf8(&buf)
            .map_err(|_| Error::invalid(path, Some(no), "not valid UTF-8"))?;
        if line.trim().is_empty() {
            continue;
        }
        let doc: Doc = serde_json::from_str(line).map_err(|e| {
            Error::invalid(
                path,
                Some(no),
                format!("expected {{\"text\": ..., \"title\": ...}}: {e}"),
            )
        })?;
        docs.push(doc);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake_is_repaired_and_clean_text_untouched() {
        assert_eq!(fix_mojibake("/Ë\u{88}waÉª faÉª/"), "/ˈwaɪ faɪ/");
        assert_eq!(fix_mojibake("cafÃ© and naÃ¯ve"), "café and naïve");
        for clean in ["café", "plain ascii", "Ελληνικά 東京 🙂", "£5 ±2 ½"] {
            assert_eq!(fix_mojibake(clean), clean);
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_tsv_with_titles_and_every_jsonl_flavour() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), "c.tsv", "1\tfirst\n2\t\n");
        let t = write(d.path(), "t.tsv", "1\tT1\n2\t\n");
        let recs: Vec<Record> = CorpusReader::open(
            &c,
            ReadOptions {
                titles: Some(t),
                ..Default::default()
            },
        )
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
        assert_eq!(recs[0].title.as_deref(), Some("T1"));
        assert_eq!(recs[1].text, "");
        assert_eq!(recs[1].offset, 8);
        let j = write(
            d.path(),
            "c.jsonl",
            "{\"_id\":\"a\",\"title\":\"A\",\"text\":\"x\"}\n{\"id\":7,\"contents\":\"y\"}\n{\"id\":\"b\",\"title\":\"B\",\"text\":\"z\",\"extra\":1}\n",
        );
        let recs: Vec<Record> = CorpusReader::open(&j, ReadOptions::default())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            recs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "7", "b"]
        );
        assert_eq!(recs[1].title, None);
        let back = read_record_at(&j, recs[2].offset, false).unwrap();
        assert_eq!((back.id.as_str(), back.text.as_str()), ("b", "z"));
    }

    #[test]
    fn malformed_lines_name_file_and_line_or_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), "c.tsv", "1\tok\nno tab here\n3\tok\n");
        let e = CorpusReader::open(&c, ReadOptions::default())
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("c.tsv, line 2") && e.contains("no tab"), "{e}");
        let mut r = CorpusReader::open(
            &c,
            ReadOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<String> = r.by_ref().map(|x| x.unwrap().id).collect();
        assert_eq!(ids, ["1", "3"]);
        assert_eq!(r.skipped, 1);
        let bad = d.path().join("bad.tsv");
        std::fs::write(&bad, b"1\tok\n2\t\xff\xfe\n").unwrap();
        let e = CorpusReader::open(&bad, ReadOptions::default())
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
        let t = write(d.path(), "t.tsv", "1\tA\n9\tB\n3\tC\n");
        let c2 = write(d.path(), "c2.tsv", "1\tok\n2\tok\n3\tok\n");
        let e = CorpusReader::open(
            &c2,
            ReadOptions {
                titles: Some(t),
                ..Default::default()
            },
        )
        .unwrap()
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
        assert!(e.contains("t.tsv, line 2") && e.contains("`9`"), "{e}");
    }

    #[test]
    fn a_titles_file_that_ends_early_is_named_without_a_line_past_its_end() {
        let d = tempfile::tempdir().unwrap();
        let c = write(d.path(), "c.tsv", "7\ta\n8\tb\n");
        // One line, no line end: there is no line 2 to name.
        let t = write(d.path(), "t.tsv", "7\tA");
        let e = CorpusReader::open(
            &c,
            ReadOptions {
                titles: Some(t.clone()),
                ..Default::default()
            },
        )
        .unwrap()
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
        let named = format!("{}: ", t.display());
        assert!(e.starts_with(&named), "{e}");
        assert!(
            e.contains("ends after line 1") && e.contains("`8`") && e.contains("line 2 of"),
            "{e}"
        );
    }

    #[test]
    fn query_vectors_without_columns_are_refused() {
        use crate::store::npy::{header, Dtype};
        let d = tempfile::tempdir().unwrap();
        // Rows of no columns take no bytes: a file of only a header can claim any number of them.
        for rows in [5usize, 1_000_000_000_000] {
            let p = d.path().join("q.npy");
            std::fs::write(&p, header(Dtype::F32, rows, Some(0))).unwrap();
            let e = read_query_vectors(&p, None, 0).unwrap_err().to_string();
            assert!(
                e.contains("q.npy")
                    && e.contains(&format!("({rows}, 0)"))
                    && e.contains("one dimension"),
                "{e}"
            );
        }
    }
}
