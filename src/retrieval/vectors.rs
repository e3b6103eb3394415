//! The vector file: unit-length embeddings, one row per chunk, read through `memmap2` so a large
//! catalogue opens without reading it and the page cache is shared by every process that opens it.
//!
//! Layout (little-endian): `CLERKVEC` magic, u32 dimension, u32 row count, then rows of f32.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;

use super::error::{Result, RetrievalError};
pub use crate::engine::model::dot;

const MAGIC: &[u8; 8] = b"CLERKVEC";
const HEADER: usize = 16;

#[cfg(target_endian = "big")]
compile_error!("the vector file is read in place as little-endian f32");

pub struct Vectors {
    map: Option<Mmap>,
    dim: usize,
    rows: usize,
}

impl Vectors {
    /// Writes rows to `path` and syncs it; the caller renames the generation into place.
    pub fn write(path: &Path, dim: usize, rows: &[Vec<f32>]) -> Result<()> {
        let io = |e| RetrievalError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut bytes = Vec::with_capacity(HEADER + rows.len() * dim * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(dim as u32).to_le_bytes());
        bytes.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        for row in rows {
            if row.len() != dim {
                return Err(RetrievalError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("a vector of {} values in a {dim}-dimension file", row.len()),
                });
            }
            for v in row {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut f = File::create(path).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)
    }

    pub fn open(path: &Path) -> Result<Self> {
        let corrupt = |message: String| RetrievalError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        let file = File::open(path).map_err(|e| RetrievalError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let len = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        if len < HEADER {
            return Err(corrupt("vector file shorter than its header".into()));
        }
        // SAFETY: generations are written once and never modified in place (a new ingest writes a
        // new generation), so the mapped bytes don't change under us.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| RetrievalError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if &map[..8] != MAGIC {
            return Err(corrupt("not a clerk vector file".into()));
        }
        let dim = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes")) as usize;
        let rows = u32::from_le_bytes(map[12..16].try_into().expect("4 bytes")) as usize;
        if len != HEADER + dim * rows * 4 {
            return Err(corrupt(format!("{len} bytes for {rows} vectors of {dim}")));
        }
        let vectors = Vectors {
            map: Some(map),
            dim,
            rows,
        };
        // Checks alignment once, so row() can't fail later.
        let _ = vectors.data()?;
        Ok(vectors)
    }

    pub fn empty(dim: usize) -> Self {
        Vectors {
            map: None,
            dim,
            rows: 0,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    fn data(&self) -> Result<&[f32]> {
        let Some(map) = &self.map else { return Ok(&[]) };
        let bytes = &map[HEADER..];
        // SAFETY: any bit pattern is a valid f32; align_to only yields the aligned middle part.
        let (head, floats, tail) = unsafe { bytes.align_to::<f32>() };
        if !head.is_empty() || !tail.is_empty() {
            return Err(RetrievalError::Corrupt {
                path: Default::default(),
                message: "vector data is not 4-byte aligned".into(),
            });
        }
        Ok(floats)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let data = self.data().unwrap_or(&[]);
        &data[i * self.dim..(i + 1) * self.dim]
    }

    /// The `k` rows most similar to `query` (dot product of unit vectors, i.e. cosine) among those
    /// `keep` accepts, best first. Exhaustive: exact, and a few milliseconds even for 10,000 rows.
    pub fn top_k(
        &self,
        query: &[f32],
        k: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<(usize, f32)> {
        let data = self.data().unwrap_or(&[]);
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        if k == 0 {
            return best;
        }
        for (i, row) in data.chunks_exact(self.dim).enumerate() {
            let score = dot(row, query);
            if best.len() == k && score <= best[k - 1].1 {
                continue;
            }
            if !keep(i) {
                continue;
            }
            let at = best.partition_point(|&(_, s)| s >= score);
            best.insert(at, (i, score));
            best.truncate(k);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ranks() {
        let dir = std::env::temp_dir().join(format!("clerk-vec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.bin");
        let rows = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.6, 0.8, 0.0],
        ];
        Vectors::write(&path, 3, &rows).unwrap();
        let v = Vectors::open(&path).unwrap();
        assert_eq!((v.dim(), v.len()), (3, 3));
        assert_eq!(v.row(2), &[0.6, 0.8, 0.0]);
        let top = v.top_k(&[0.0, 1.0, 0.0], 2, |_| true);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        let top = v.top_k(&[0.0, 1.0, 0.0], 2, |i| i != 1);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 0]);
        // A truncated file is refused, not read past its end.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(
            Vectors::open(&path),
            Err(RetrievalError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
