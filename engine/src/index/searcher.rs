//! An index opened with the encoder its manifest names: the model check, the encoder's options and
//! the search mode are decided here, for every front end (one query, batch runs, the REPL).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::{Index, SearchMode};
use crate::error::{Error, Result};
use crate::search::hnsw::DEFAULT_EF;
use crate::search::Hit;
use crate::{Doc, Encoder, EncoderOptions, Kind, ModelFiles};

#[derive(Debug, Clone)]
pub struct SearcherOptions {
    /// A model folder or hub id overriding the manifest's (it must be the same model).
    pub model: Option<String>,
    pub device: candle_core::Device,
    /// Search every vector instead of the graph.
    pub exact: bool,
    /// The graph's search-time `ef` (default `DEFAULT_EF`).
    pub ef: Option<usize>,
    /// Load the encoder (false: the queries come as vectors, so no model is needed).
    pub encoder: bool,
}

impl Default for SearcherOptions {
    fn default() -> Self {
        SearcherOptions {
            model: None,
            device: candle_core::Device::Cpu,
            exact: false,
            ef: None,
            encoder: true,
        }
    }
}

pub struct Searcher {
    pub index: Index,
    /// The index's encoder; `None` for an imported index (no model) or when not asked for.
    encoder: Option<Arc<Encoder>>,
    /// The mode the options chose: the graph when the index has one, unless `exact`.
    pub mode: SearchMode,
    opts: SearcherOptions,
}

impl Searcher {
    pub fn open(dir: &Path, opts: &SearcherOptions) -> Result<Self> {
        Self::open_with(dir, opts, None)
    }

    /// Opens the index's folder again (the generation its manifest names now), with the same
    /// options. The encoder is kept when the manifest names the same model, input format, pooling
    /// and precision; otherwise the manifest's model is loaded.
    pub fn reopen(&self) -> Result<Self> {
        let keep = self
            .encoder
            .as_ref()
            .map(|e| (&self.index.manifest, e.clone()));
        Self::open_with(&self.index.dir, &self.opts, keep)
    }

    fn open_with(
        dir: &Path,
        opts: &SearcherOptions,
        keep: Option<(&crate::store::manifest::Manifest, Arc<Encoder>)>,
    ) -> Result<Self> {
        let index = Index::open(dir)?;
        let m = &index.manifest;
        let same_model = |old: &crate::store::manifest::Manifest| {
            let fp = |m: &crate::store::manifest::Manifest| {
                m.model.as_ref().map(|x| x.fingerprint.clone())
            };
            fp(old).is_some()
                && fp(old) == fp(m)
                && old.input_format == m.input_format
                && old.pooling == m.pooling
                && old.precision == m.precision
        };
        let encoder = match (&m.model, keep) {
            (Some(_), Some((old, enc))) if same_model(old) => Some(enc),
            (Some(model), _) if opts.encoder => {
                Some(Arc::new(Self::load_encoder(dir, m, model, opts)?))
            }
            _ => None,
        };
        if opts.ef.is_some() && !opts.exact && m.hnsw.is_none() {
            return Err(Error::Usage(format!(
                "--ef sets the graph search, but {} has no HNSW graph: search it with --exact, or build \
                 the graph with `simlm-index hnsw {}`",
                dir.display(),
                dir.display()
            )));
        }
        let mode = if opts.exact || m.hnsw.is_none() {
            SearchMode::Exact
        } else {
            // The graph searches by default: one that cannot be opened is an error now, not at
            // every search.
            index.graph()?;
            SearchMode::Hnsw {
                ef: opts.ef.unwrap_or(DEFAULT_EF),
            }
        };
        Ok(Searcher {
            index,
            encoder,
            mode,
            opts: opts.clone(),
        })
    }

    fn load_encoder(
        dir: &Path,
        m: &crate::store::manifest::Manifest,
        model: &crate::store::manifest::ModelInfo,
        opts: &SearcherOptions,
    ) -> Result<Encoder> {
        let files = ModelFiles::resolve(opts.model.as_deref().unwrap_or(&model.spec))?;
        if files.fingerprint()? != model.fingerprint {
            return Err(Error::Usage(format!(
                "model {} is not the one {} was built with ({}; its fingerprint differs): queries must be encoded by the index's model",
                files.spec,
                dir.display(),
                model.spec
            )));
        }
        let (Some(format), Some(pooling), Some(precision)) =
            (m.input_format, m.pooling, m.precision)
        else {
            return Err(Error::corrupt(
                dir.join(crate::store::layout::MANIFEST),
                "names a model but not its input format, pooling and precision: the manifest is damaged; rebuild the index",
            ));
        };
        let enc_opts = EncoderOptions {
            format,
            pooling: Some(pooling),
            precision,
            device: opts.device.clone(),
            ..Default::default()
        };
        Encoder::from_files(files, &enc_opts)
    }

    /// The encoder an opened index's manifest names, loaded and checked as `open` loads it (the
    /// model's fingerprint against the manifest's): for front ends that open the index first and load
    /// the model only when a text query comes (the Python package's `Index.search_text`).
    pub fn load_index_encoder(index: &Index, opts: &SearcherOptions) -> Result<Encoder> {
        let m = &index.manifest;
        match &m.model {
            Some(model) => Self::load_encoder(&index.dir, m, model, opts),
            None => Err(Error::Usage(format!(
                "{} was imported from vectors made elsewhere and has no model: it answers \
                 pre-encoded queries only",
                index.dir.display()
            ))),
        }
    }

    /// The index's encoder, or why there is none.
    pub fn encoder(&self) -> Result<&Encoder> {
        self.encoder.as_deref().ok_or_else(|| {
            if self.index.manifest.model.is_none() {
                Error::Usage(format!(
                    "{} was imported from vectors made elsewhere and has no model: it answers \
                     pre-encoded queries only (`simlm-search batch --query-vectors Q.npy`)",
                    self.index.dir.display()
                ))
            } else {
                Error::Usage("the searcher was opened without its encoder".into())
            }
        })
    }

    /// Encodes queries and searches them: the hits, and the encode and search times in seconds.
    pub fn search(
        &self,
        queries: &[Doc],
        k: usize,
        mode: SearchMode,
    ) -> Result<(Vec<Vec<Hit>>, f64, f64)> {
        let t = Instant::now();
        let vecs = self.encoder()?.encode(Kind::Query, queries)?;
        let enc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let hits = self.index.search(&vecs, k, mode)?;
        Ok((hits, enc, t.elapsed().as_secs_f64()))
    }

    /// The graph mode with `ef`, or why this index cannot search so.
    pub fn graph_mode(&self, ef: usize) -> std::result::Result<SearchMode, &'static str> {
        if self.index.manifest.hnsw.is_none() {
            Err("this index has no HNSW graph (build one with `simlm-index hnsw`)")
        } else if ef == 0 {
            Err("ef must be positive")
        } else {
            Ok(SearchMode::Hnsw { ef })
        }
    }
}
