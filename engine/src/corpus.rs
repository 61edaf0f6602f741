//! Corpus readers: MS MARCO `collection.tsv` (`pid<TAB>text`, with an optional titles file
//! `pid<TAB>title` in the same order), JSONL as SimLM/Pyserini (`id`, `title`, `contents`), BEIR
//! (`_id`, `title`, `text`) and the classic collections (`id`, `title`, `text`) write it; each plain or
//! gzip-compressed. Records are streamed: the collection's text is never held in memory at once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};

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
        let mut r = open_lines(path)?;
        let mut first = Vec::new();
        r.read_until(b'\n', &mut first).at(path)?;
        Ok(if first.trim_ascii_start().first() == Some(&b'{') {
            CorpusFormat::Jsonl
        } else {
            CorpusFormat::Tsv
        })
    }
}

/// A buffered reader over a file, decompressing it when it starts with the gzip magic bytes.
pub fn open_lines(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let mut f = File::open(path).at(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).at(path)?;
    f.seek(SeekFrom::Start(0)).at(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(f),
        )))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }
}

pub fn is_gzip(path: &Path) -> Result<bool> {
    let mut f = File::open(path).at(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).at(path)?;
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
    lines: Box<dyn BufRead + Send>,
    titles: Option<(PathBuf, Box<dyn BufRead + Send>, usize)>,
    opts: ReadOptions,
    line: usize,
    offset: u64,
    buf: Vec<u8>,
    /// Malformed lines skipped under `skip_bad`.
    pub skipped: usize,
}

impl CorpusReader {
    pub fn open(path: &Path, opts: ReadOptions) -> Result<Self> {
        let format = CorpusFormat::detect(path)?;
        let titles = match &opts.titles {
            Some(t) => Some((t.clone(), open_lines(t)?, 0)),
            None => None,
        };
        Ok(CorpusReader {
            path: path.to_path_buf(),
            format,
            lines: open_lines(path)?,
            titles,
            opts,
            line: 0,
            offset: 0,
            buf: Vec::new(),
            skipped: 0,
        })
    }

    pub fn format(&self) -> CorpusFormat {
        self.format
    }

    fn next_title(&mut self, id: &str) -> Result<Option<String>> {
        let Some((tpath, r, tline)) = &mut self.titles else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = r.read_until(b'\n', &mut buf).at(&*tpath)?;
            *tline += 1;
            if n == 0 {
                return Err(Error::invalid(
                    &*tpath,
                    Some(*tline),
                    format!("the titles file ended before passage `{id}`; it must list the collection's ids in the same order"),
                ));
            }
            strip_eol(&mut buf);
            if !buf.is_empty() {
                break;
            }
        }
        let line = String::from_utf8(buf)
            .map_err(|_| Error::invalid(&*tpath, Some(*tline), "not valid UTF-8"))?;
        let (tid, title) = line.split_once('\t').unwrap_or((line.as_str(), ""));
        if tid != id {
            return Err(Error::invalid(
                &*tpath,
                Some(*tline),
                format!("title id `{tid}` does not match passage id `{id}` (line {} of {}): the titles file must list the same ids in the same order", self.line, self.path.display()),
            ));
        }
        Ok(Some(title.to_string()))
    }
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
            buf.clear();
            let start = self.offset;
            let n = match self.lines.read_until(b'\n', &mut buf) {
                Ok(n) => n,
                Err(e) => return Some(Err(Error::io(&self.path, e))),
            };
            if n == 0 {
                return None;
            }
            self.offset += n as u64;
            self.line += 1;
            strip_eol(&mut buf);
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
                        if let Some((tpath, r, tline)) = &mut self.titles {
                            let mut t = Vec::new();
                            if let Err(e) = r.read_until(b'\n', &mut t) {
                                return Some(Err(Error::io(&*tpath, e)));
                            }
                            *tline += 1;
                        }
                        continue;
                    }
                    return Some(Err(Error::invalid(&self.path, Some(self.line), msg)));
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
                line: self.line,
            }));
        }
    }
}

/// Reads the record whose line starts at `offset` (seeking in a plain file, decompressing up to it in
/// a gzip file). Titles from a separate titles file are not looked up here.
pub fn read_record_at(path: &Path, offset: u64, fix_encoding: bool) -> Result<Record> {
    let format = CorpusFormat::detect(path)?;
    let mut r: Box<dyn BufRead + Send> = if is_gzip(path)? {
        let mut r = open_lines(path)?;
        std::io::copy(&mut r.by_ref().take(offset), &mut std::io::sink()).at(path)?;
        r
    } else {
        let mut f = File::open(path).at(path)?;
        f.seek(SeekFrom::Start(offset)).at(path)?;
        Box::new(BufReader::new(f))
    };
    let mut buf = Vec::new();
    r.read_until(b'\n', &mut buf).at(path)?;
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
}
