//! `docids.txt` (one passage id a line) and `offsets.bin` (little-endian u64 per passage: where its
//! line starts in the collection), written and read together.

use std::io::Write;
use std::path::Path;

use super::layout::{DOCIDS, OFFSETS};
use super::manifest::{sha256_bytes, FileSum};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;

/// Writes both files of `dir` atomically (the ids were checked when the collection was read).
pub fn write(dir: &Path, ids: &[String], offsets: &[u64]) -> Result<()> {
    debug_assert_eq!(ids.len(), offsets.len());
    for id in ids {
        if id.contains(['\n', '\r']) {
            return Err(Error::invalid(
                dir.join(DOCIDS),
                None,
                format!("passage id {id:?} contains a line break"),
            ));
        }
    }
    super::atomic_write(&dir.join(DOCIDS), |w| {
        for id in ids {
            w.write_all(id.as_bytes())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })?;
    failpoint::hit("ids").at(dir.join(DOCIDS))?;
    super::atomic_write(&dir.join(OFFSETS), |w| {
        for o in offsets {
            w.write_all(&o.to_le_bytes())?;
        }
        Ok(())
    })?;
    failpoint::hit("offsets").at(dir.join(OFFSETS))
}

/// Reads both files of `dir`. Where the manifest's records are given, the bytes read are checked
/// against their checksums (the files are read whole anyway, so the check is cheap), so a changed id
/// is an error, not a wrong id in a run file.
pub fn read(dir: &Path, sums: Option<(&FileSum, &FileSum)>) -> Result<(Vec<String>, Vec<u64>)> {
    let ids_path = dir.join(DOCIDS);
    let raw_ids = std::fs::read(&ids_path).at(&ids_path)?;
    let off_path = dir.join(OFFSETS);
    let raw_off = std::fs::read(&off_path).at(&off_path)?;
    if let Some((ids_sum, off_sum)) = sums {
        for (path, raw, sum) in [
            (&ids_path, &raw_ids, ids_sum),
            (&off_path, &raw_off, off_sum),
        ] {
            if raw.len() as u64 != sum.size || sha256_bytes(raw) != sum.sha256 {
                return Err(Error::corrupt(
                    path,
                    "differs from the manifest's checksum: the index is damaged; run `simlm-index verify` and rebuild it",
                ));
            }
        }
    }
    let text = String::from_utf8(raw_ids)
        .map_err(|_| Error::corrupt(&ids_path, "not valid UTF-8: the file is damaged"))?;
    let ids: Vec<String> = text.lines().map(str::to_string).collect();
    if raw_off.len() % 8 != 0 {
        return Err(Error::corrupt(
            &off_path,
            "length is not a multiple of 8: the file is damaged",
        ));
    }
    let offsets: Vec<u64> = raw_off
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if offsets.len() != ids.len() {
        return Err(Error::corrupt(
            &off_path,
            format!(
                "{} offsets for {} ids: the index is damaged",
                offsets.len(),
                ids.len()
            ),
        ));
    }
    Ok((ids, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_offsets_round_trip_and_changes_are_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = vec!["7".to_string(), "D-12".to_string()];
        write(tmp.path(), &ids, &[0, 40]).unwrap();
        let sums = (
            FileSum::of(&tmp.path().join(DOCIDS), DOCIDS).unwrap(),
            FileSum::of(&tmp.path().join(OFFSETS), OFFSETS).unwrap(),
        );
        assert_eq!(
            read(tmp.path(), Some((&sums.0, &sums.1))).unwrap(),
            (ids, vec![0, 40])
        );
        std::fs::write(tmp.path().join(DOCIDS), "8\nD-12\n").unwrap();
        let e = read(tmp.path(), Some((&sums.0, &sums.1)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("docids.txt") && e.contains("checksum"), "{e}");
        let e = write(tmp.path(), &["a\nb".into()], &[0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line break"), "{e}");
    }
}
