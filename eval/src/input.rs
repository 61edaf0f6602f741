//! Reading qrels and run files: plain or gzip-compressed, whitespace-separated.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An error in an input file, naming the file and (1-based) line.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}{}: {msg}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Malformed {
        path: PathBuf,
        line: Option<usize>,
        msg: String,
    },
}

fn malformed(path: &Path, line: Option<usize>, msg: impl Into<String>) -> InputError {
    InputError::Malformed {
        path: path.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

/// The UTF-8 byte-order mark some editors put at the start of a file; one is dropped before parsing
/// (it would otherwise become part of the first query id).
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The whole content of a file, decompressed when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, InputError> {
    let io = |source| InputError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                // `out` holds what was decompressed before the damage: name the line it broke in.
                let line = memchr::memchr_iter(b'\n', &out).count() + 1;
                let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "the gzip data ends early: the file looks truncated (an interrupted download or copy)"
                } else {
                    "the gzip data is damaged: the file looks truncated or corrupted"
                };
                malformed(
                    path,
                    Some(line),
                    format!("{what} ({e}); fetch or compress it again"),
                )
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Splits `data` into (1-based line number, line) pairs, skipping blank lines; `\r\n` is accepted.
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    let mut no = 0;
    std::iter::from_fn(move || loop {
        if start >= data.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &data[start..])
            .map(|i| start + i)
            .unwrap_or(data.len());
        let mut line = &data[start..end];
        start = end + 1;
        no += 1;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        return Some((no, line));
    })
}

fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty())
}

fn utf8<'a>(path: &Path, no: usize, f: &'a [u8]) -> Result<&'a str, InputError> {
    std::str::from_utf8(f).map_err(|_| malformed(path, Some(no), "not valid UTF-8"))
}

/// Relevance judgments: query id -> document id -> label.
#[derive(Debug, Default, Clone)]
pub struct Qrels {
    pub queries: HashMap<String, FxHashMap<String, i32>>,
}

impl Qrels {
    /// Reads TREC qrels (`qid iter docid rel`) or BEIR qrels (`query-id corpus-id score`, with a header).
    pub fn read(path: &Path) -> Result<Self, InputError> {
        let data = read_maybe_gz(path)?;
        Self::parse(&data, path)
    }

    pub fn parse(data: &[u8], path: &Path) -> Result<Self, InputError> {
        let data = data.strip_prefix(BOM).unwrap_or(data);
        let mut queries: HashMap<String, FxHashMap<String, i32>> = HashMap::new();
        let mut n = 0usize;
        for (no, line) in lines(data) {
            let f: Vec<&[u8]> = fields(line).collect();
            let (q, d, r) = match f.len() {
                4 => (f[0], f[2], f[3]),
                3 => (f[0], f[1], f[2]),
                k => {
                    return Err(malformed(
                        path,
                        Some(no),
                        format!("expected 4 fields `qid iter docid rel` (or BEIR's 3), found {k}"),
                    ))
                }
            };
            let r = utf8(path, no, r)?;
            let label: i32 = match r.parse() {
                Ok(l) => l,
                // A BEIR header line (`query-id corpus-id score`) is the only non-numeric label allowed.
                Err(_) if n == 0 && f.len() == 3 && !r.chars().any(|c| c.is_ascii_digit()) => {
                    continue
                }
                Err(_) => {
                    return Err(malformed(
                        path,
                        Some(no),
                        format!("relevance label `{r}` is not an integer"),
                    ))
                }
            };
            n += 1;
            queries
                .entry(utf8(path, no, q)?.to_string())
                .or_default()
                .insert(utf8(path, no, d)?.to_string(), label);
        }
        if n == 0 {
            return Err(malformed(path, None, "the qrels file holds no judgments"));
        }
        Ok(Qrels { queries })
    }
}

/// One retrieved document: where its id lies in the run's text, and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    start: usize,
    len: u32,
    pub score: f64,
}

/// A run: query id -> ranked documents, already in evaluation order. Document ids stay in the file's
/// text (one allocation for the whole run, not one per line).
#[derive(Debug, Default, Clone)]
pub struct Run {
    text: String,
    pub queries: HashMap<String, Vec<Hit>>,
}

/// Ordering within a query (trec_eval's rule): score descending, ties by docid descending as
/// strings. The rank column of a TREC run is ignored; a run without scores (MS MARCO's `qid pid rank`)
/// is ordered by its rank column, ascending.
pub fn sort_hits(hits: &mut [(&str, f64)]) {
    hits.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| b.0.as_bytes().cmp(a.0.as_bytes()))
    });
}

/// The run formats this crate reads, and that `simlm-search` writes through [`write_run_line`]: one
/// definition of a run line for both tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunFormat {
    /// `qid Q0 docid rank score tag` (trec_eval's).
    Trec,
    /// `qid<TAB>pid<TAB>rank` (the MS MARCO evaluation script's).
    Msmarco,
}

impl std::str::FromStr for RunFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trec" => Ok(RunFormat::Trec),
            "msmarco" => Ok(RunFormat::Msmarco),
            _ => Err(format!("unknown run format `{s}` (trec | msmarco)")),
        }
    }
}

impl std::fmt::Display for RunFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunFormat::Trec => "trec",
            RunFormat::Msmarco => "msmarco",
        })
    }
}

/// Writes one line of a run: the document at `rank` (1-based) for query `qid`. Scores are written
/// with six decimals (TREC format; the MS MARCO format has no score column, its rank orders).
pub fn write_run_line(
    w: &mut dyn std::io::Write,
    format: RunFormat,
    qid: &str,
    docid: &str,
    rank: usize,
    score: f32,
    tag: &str,
) -> std::io::Result<()> {
    match format {
        RunFormat::Trec => writeln!(w, "{qid} Q0 {docid} {rank} {score:.6} {tag}"),
        RunFormat::Msmarco => writeln!(w, "{qid}\t{docid}\t{rank}"),
    }
}

/// Whole-file UTF-8 check, reporting the first bad line.
fn into_utf8(data: Vec<u8>, path: &Path) -> Result<String, InputError> {
    String::from_utf8(data).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        malformed(path, Some(line), "not valid UTF-8")
    })
}

impl Run {
    /// Reads a TREC 6-column run (`qid Q0 docid rank score tag`) or an MS MARCO 3-column run
    /// (`qid<TAB>pid<TAB>rank`), plain or gzip-compressed.
    pub fn read(path: &Path) -> Result<Self, InputError> {
        let data = read_maybe_gz(path)?;
        Self::parse(data, path)
    }

    /// The document id of a hit of this run.
    pub fn docid(&self, h: &Hit) -> &str {
        &self.text[h.start..h.start + h.len as usize]
    }

    /// A query's ranked document ids.
    pub fn ranking(&self, qid: &str) -> Option<Vec<&str>> {
        self.queries
            .get(qid)
            .map(|hs| hs.iter().map(|h| self.docid(h)).collect())
    }

    pub fn parse(mut data: Vec<u8>, path: &Path) -> Result<Self, InputError> {
        use rayon::prelude::*;
        if data.starts_with(BOM) {
            data.drain(..BOM.len());
        }
        let text = into_utf8(data, path)?;
        // Parse chunks of whole lines in parallel; each chunk groups its lines by query.
        let chunks = line_chunks(text.as_bytes(), 4 * rayon::current_num_threads().max(1));
        let parsed: Vec<Result<Chunk, InputError>> = chunks
            .par_iter()
            .map(|&(a, b)| parse_chunk(&text, a, b, path))
            .collect();
        // Line numbers (for errors): each chunk counts from 1; shift by the lines of earlier chunks.
        let mut offset = 0usize;
        let mut by_q: FxHashMap<&str, usize> = FxHashMap::default();
        let mut names: Vec<&str> = Vec::new();
        let mut groups: Vec<Vec<(&str, f64)>> = Vec::new();
        let mut n = 0usize;
        for (chunk, &(a, b)) in parsed.into_iter().zip(&chunks) {
            let chunk = chunk.map_err(|e| match e {
                InputError::Malformed { path, line, msg } => InputError::Malformed {
                    path,
                    line: line.map(|l| l + offset),
                    msg,
                },
                e => e,
            })?;
            for (q, g) in chunk.groups {
                n += g.len();
                let gi = *by_q.entry(q).or_insert_with(|| {
                    names.push(q);
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                let dst = &mut groups[gi];
                if dst.is_empty() {
                    *dst = g;
                } else {
                    dst.extend(g);
                }
            }
            offset += memchr::memchr_iter(b'\n', &text.as_bytes()[a..b]).count();
        }
        if n == 0 {
            return Err(malformed(path, None, "the run file holds no results"));
        }
        let base = text.as_ptr() as usize;
        let sorted: Vec<Result<(String, Vec<Hit>), InputError>> = names
            .par_iter()
            .zip(groups.into_par_iter())
            .map(|(q, mut ranked)| {
                sort_hits(&mut ranked);
                if let Some(dup) = find_duplicate(&ranked) {
                    let (line, also) = match lines_of(&text, q, dup)[..] {
                        [first, second, ..] => (Some(second), format!(" (also on line {first})")),
                        [only] => (Some(only), String::new()),
                        [] => (None, String::new()),
                    };
                    return Err(malformed(
                        path,
                        line,
                        format!(
                            "document `{dup}` appears twice for query `{q}`{also}; a run may list a document once per query"
                        ),
                    ));
                }
                let hits = ranked
                    .into_iter()
                    .map(|(d, score)| Hit { start: d.as_ptr() as usize - base, len: d.len() as u32, score })
                    .collect();
                Ok((q.to_string(), hits))
            })
            .collect();
        // Of several queries with a repeated document, the one repeated first in the file is named,
        // so that every read of a file reports the same line.
        let mut queries = HashMap::with_capacity(sorted.len());
        let mut first_error: Option<InputError> = None;
        for r in sorted {
            match r {
                Ok((q, hits)) => {
                    queries.insert(q, hits);
                }
                Err(e) => {
                    if first_error
                        .as_ref()
                        .is_none_or(|f| error_line(&e) < error_line(f))
                    {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(Run { text, queries })
    }
}

/// The line an error names (none: after every line).
fn error_line(e: &InputError) -> usize {
    match e {
        InputError::Malformed { line: Some(l), .. } => *l,
        _ => usize::MAX,
    }
}

/// Lines of one chunk, grouped by query in order of first appearance; line numbers from 1 within it.
struct Chunk<'a> {
    groups: Vec<(&'a str, Vec<(&'a str, f64)>)>,
}

/// The (1-based) lines on which `docid` is listed for `qid`: the slow path of a duplicate report.
fn lines_of(text: &str, qid: &str, docid: &str) -> Vec<usize> {
    lines(text.as_bytes())
        .filter(|(_, l)| {
            let f: Vec<&[u8]> = fields(l).collect();
            f.first() == Some(&qid.as_bytes())
                && ((f.len() == 6 && f[2] == docid.as_bytes())
                    || (f.len() == 3 && f[1] == docid.as_bytes()))
        })
        .map(|(no, _)| no)
        .collect()
}

/// Cuts `data` into about `parts` ranges that end at line ends.
fn line_chunks(data: &[u8], parts: usize) -> Vec<(usize, usize)> {
    let step = (data.len() / parts.max(1)).max(1 << 16);
    let mut out = Vec::new();
    let mut a = 0;
    while a < data.len() {
        let mut b = (a + step).min(data.len());
        if b < data.len() {
            b = memchr::memchr(b'\n', &data[b..])
                .map(|i| b + i + 1)
                .unwrap_or(data.len());
        }
        out.push((a, b));
        a = b;
    }
    out
}

fn parse_chunk<'a>(
    text: &'a str,
    a: usize,
    b: usize,
    path: &Path,
) -> Result<Chunk<'a>, InputError> {
    let bytes = &text.as_bytes()[a..b];
    let mut groups: Vec<(&'a str, Vec<(&'a str, f64)>)> = Vec::new();
    let mut index: FxHashMap<&'a str, usize> = FxHashMap::default();
    let mut cur: Option<usize> = None;
    for (no, line) in lines(bytes) {
        let line_start = a + (line.as_ptr() as usize - bytes.as_ptr() as usize);
        // Field byte ranges (absolute), at most 6 kept.
        let mut f = [(0usize, 0usize); 6];
        let mut k = 0;
        let mut i = 0;
        while i < line.len() {
            while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
                i += 1;
            }
            if i == line.len() {
                break;
            }
            let s = i;
            while i < line.len() && line[i] != b' ' && line[i] != b'\t' {
                i += 1;
            }
            if k < 6 {
                f[k] = (line_start + s, line_start + i);
            }
            k += 1;
        }
        // Fields are cut at ASCII bytes of valid UTF-8, so slicing the text cannot split a character.
        let field = |j: usize| &text[f[j].0..f[j].1];
        let (q, d, score) = match k {
            6 => {
                let score = fast_f64(field(4))
                    .ok_or_else(|| malformed(path, Some(no), format!("score `{}` is not a number", field(4))))?;
                (field(0), field(2), score)
            }
            3 => {
                let rank: u64 = field(2).parse().map_err(|_| {
                    malformed(path, Some(no), format!("rank `{}` is not a positive integer", field(2)))
                })?;
                // Rank order as a score: rank 1 first.
                (field(0), field(1), -(rank as f64))
            }
            k => {
                return Err(malformed(
                    path,
                    Some(no),
                    format!("expected 6 fields `qid Q0 docid rank score tag` or 3 fields `qid pid rank`, found {k}"),
                ))
            }
        };
        // Runs are almost always grouped by query: append to the current group without hashing.
        let gi = match cur {
            Some(gi) if groups[gi].0 == q => gi,
            _ => {
                let gi = *index.entry(q).or_insert_with(|| {
                    groups.push((q, Vec::with_capacity(1024)));
                    groups.len() - 1
                });
                cur = Some(gi);
                gi
            }
        };
        groups[gi].1.push((d, score));
    }
    Ok(Chunk { groups })
}

/// A document id listed twice in one query's ranking, if any.
fn find_duplicate<'a>(ranked: &[(&'a str, f64)]) -> Option<&'a str> {
    // MS MARCO ids are integers: compare those as numbers, which is much cheaper than strings.
    let nums: Option<Vec<u64>> = ranked
        .iter()
        .map(|(d, _)| {
            // Only plain digits: `+1` parses as 1 but is another document than `1`.
            let canonical = d.len() < 20 && !d.starts_with('0') || *d == "0";
            if canonical && d.bytes().all(|b| b.is_ascii_digit()) {
                d.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect();
    if let Some(mut nums) = nums {
        nums.sort_unstable();
        let dup = nums.windows(2).find(|w| w[0] == w[1])?[0];
        return ranked
            .iter()
            .map(|(d, _)| *d)
            .find(|d| d.parse::<u64>().ok() == Some(dup));
    }
    let mut ids: Vec<&str> = ranked.iter().map(|(d, _)| *d).collect();
    ids.sort_unstable();
    ids.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// Parses a score. Plain decimals of at most 15 significant digits (what runs hold) take Clinger's
/// fast path, an exact integer divided by an exact power of ten, which is correctly rounded and so
/// equal to the standard parser's result; anything else goes to the standard parser.
fn fast_f64(s: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let b = s.as_bytes();
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let mut mant: u64 = 0;
    let mut nd = 0usize;
    let mut frac = 0usize;
    let mut seen_dot = false;
    let mut simple = !digits.is_empty();
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                mant = mant * 10 + (c - b'0') as u64;
                nd += 1;
                if seen_dot {
                    frac += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => {
                simple = false;
                break;
            }
        }
        if nd > 15 {
            simple = false;
            break;
        }
    }
    if simple && nd > 0 {
        let v = mant as f64 / POW10[frac];
        return Some(if neg { -v } else { v });
    }
    let v = s.parse::<f64>().ok()?;
    if v.is_nan() {
        None
    } else {
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_runs_read_back_in_their_order() {
        // Docids whose string order is not the rank order: the reader orders TREC lines by score
        // (ties by docid, trec_eval's rule) and MS MARCO lines by rank.
        let hits = [("d9", 2.5f32), ("d10", 2.25), ("d2", 1.0)];
        for format in [RunFormat::Trec, RunFormat::Msmarco] {
            let mut out = Vec::new();
            for q in ["q1", "q2"] {
                for (rank, (d, score)) in hits.iter().enumerate() {
                    write_run_line(&mut out, format, q, d, rank + 1, *score, "t").unwrap();
                }
            }
            let run = Run::parse(out, Path::new("run")).unwrap();
            for q in ["q1", "q2"] {
                assert_eq!(run.ranking(q).unwrap(), vec!["d9", "d10", "d2"], "{format}");
            }
            assert_eq!(format.to_string().parse::<RunFormat>().unwrap(), format);
        }
    }

    fn p() -> &'static Path {
        Path::new("x.txt")
    }

    #[test]
    fn reads_trec_and_beir_qrels() {
        let q = Qrels::parse(b"1 0 d1 2\n1 0 d2 0\n2\t0\td3\t1\n", p()).unwrap();
        assert_eq!(q.queries["1"]["d1"], 2);
        assert_eq!(q.queries["2"]["d3"], 1);
        let q = Qrels::parse(b"query-id\tcorpus-id\tscore\n7\tabc\t1\n", p()).unwrap();
        assert_eq!(q.queries["7"]["abc"], 1);
    }

    #[test]
    fn bad_labels_name_the_line() {
        let e = Qrels::parse(b"1 0 d1 2\n1 0 d2 x\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.txt, line 2") && e.contains("`x`"), "{e}");
        let e = Qrels::parse(b"", p()).unwrap_err().to_string();
        assert!(e.contains("no judgments"), "{e}");
    }

    #[test]
    fn run_order_is_score_then_docid_descending() {
        let r = Run::parse(
            Vec::from(&b"1 Q0 a 1 1.0 t\n1 Q0 b 2 1.0 t\n1 Q0 c 3 2.0 t\n"[..]),
            p(),
        )
        .unwrap();
        let ids = r.ranking("1").unwrap();
        assert_eq!(ids, ["c", "b", "a"]);
    }

    #[test]
    fn fast_float_path_equals_the_standard_parser() {
        for x in [
            "0",
            "1",
            "-2.5",
            "12.345678",
            "0.000001",
            "123456789.123456",
            "99.999999999999",
            "1e5",
            "3.",
            ".5",
            "-0.0",
            "1234567890123456789",
            "0.1234567890123456789",
            "inf",
        ] {
            assert_eq!(fast_f64(x), x.parse::<f64>().ok(), "{x}");
        }
        let mut v: u64 = 12345;
        for _ in 0..100_000 {
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = format!("{}.{:06}", (v >> 40) % 100_000, (v >> 8) % 1_000_000);
            assert_eq!(fast_f64(&s), s.parse::<f64>().ok(), "{s}");
        }
        assert_eq!(fast_f64("nan"), None);
        assert_eq!(fast_f64("x1"), None);
    }

    #[test]
    fn msmarco_runs_follow_their_rank_column() {
        let r = Run::parse(Vec::from(&b"1\tb\t2\n1\ta\t1\n1\tc\t3\n"[..]), p()).unwrap();
        let ids = r.ranking("1").unwrap();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[test]
    fn duplicates_and_bad_scores_are_errors_with_lines() {
        let e = Run::parse(
            Vec::from(&b"1 Q0 a 1 1.0 t\n2 Q0 a 1 1.0 t\n1 Q0 a 2 0.5 t\n"[..]),
            p(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("appears twice"), "{e}");
        let e = Run::parse(Vec::from(&b"1 Q0 a 1 abc t\n"[..]), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("`abc`"), "{e}");
        let e = Run::parse(Vec::from(&b"1 Q0 a 1\n"[..]), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("found 4"), "{e}");
    }

    #[test]
    fn ids_that_parse_as_the_same_number_but_differ_are_different_documents() {
        let r = Run::parse(Vec::from(&b"5\t7\t2\n2\t+1\t1\n2\t1\t2\n"[..]), p()).unwrap();
        assert_eq!(r.ranking("2").unwrap(), ["+1", "1"]);
        // The same ids written alike are one document listed twice.
        let e = Run::parse(Vec::from(&b"2\t1\t1\n2\t1\t2\n"[..]), p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("also on line 1"), "{e}");
    }

    #[test]
    fn of_several_repeated_documents_the_first_repeated_line_is_named() {
        // Query 1 comes first but repeats its document on line 5; query 2 repeats its on line 4.
        let text = b"1 Q0 a 1 3 t\n2 Q0 b 1 3 t\n2 Q0 c 2 2 t\n2 Q0 b 3 1 t\n1 Q0 a 2 2 t\n";
        for _ in 0..20 {
            let e = Run::parse(text.to_vec(), p()).unwrap_err().to_string();
            assert!(e.contains("x.txt, line 4:") && e.contains("`b`"), "{e}");
        }
    }

    #[test]
    fn queries_split_across_the_file_are_joined() {
        let r = Run::parse(
            Vec::from(&b"1 Q0 a 1 3 t\n2 Q0 a 1 1 t\n1 Q0 b 2 2 t\n"[..]),
            p(),
        )
        .unwrap();
        assert_eq!(r.queries["1"].len(), 2);
    }
}
