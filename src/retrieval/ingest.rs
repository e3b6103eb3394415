//! Turning files into chunks: products (CSV, JSON, JSONL, tau2 `db.json`), FAQ (Markdown question
//! headings, CSV or JSON question–answer pairs) and policy or help pages (Markdown, plain text, HTML,
//! chunked by heading with overlapping windows for long sections).
//!
//! Parsing is pure: bytes in, chunks or an error naming the file, line and field out. Nothing here
//! touches the stored index, so a batch with one bad file never lands half-way.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use super::document::{Chunk, Kind, ProductFacts, Source};
use super::error::{ParseError, Result, RetrievalError};
use super::text::{content_hash, html_to_text, word_count};

/// Sections longer than this many words are cut into overlapping windows, so each passage fits the
/// embedder (256 word pieces for MiniLM) and stays specific enough to cite.
pub const WINDOW_WORDS: usize = 150;
/// Words repeated at the start of the next window, so a sentence cut at a boundary is whole in one.
pub const OVERLAP_WORDS: usize = 30;

/// A file format clerk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
    Jsonl,
    Markdown,
    Text,
    Html,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "md" | "markdown" => Ok(Format::Markdown),
            "txt" | "text" => Ok(Format::Text),
            "html" | "htm" => Ok(Format::Html),
            other => Err(format!(
                "unknown format `{other}` (expected csv, json, jsonl, markdown, text or html)"
            )),
        }
    }
}

impl Format {
    pub fn from_name(name: &str) -> Option<Format> {
        let ext = Path::new(name).extension()?.to_str()?;
        ext.parse().ok()
    }
}

/// One thing to ingest: a file read from disk or a body posted to the API.
#[derive(Debug, Clone)]
pub struct Input {
    /// The document id; ingesting the same id again replaces it.
    pub id: String,
    /// The file path or a name, for messages, citations and format detection.
    pub name: String,
    pub content: Vec<u8>,
    pub format: Option<Format>,
    pub kind: Option<Kind>,
}

impl Input {
    /// Hash of everything that decides the parsed chunks.
    pub fn hash(&self) -> u64 {
        let format = format!("{:?}/{:?}/{}", self.format, self.kind, PARSER_VERSION);
        content_hash(&[&self.content, format.as_bytes(), self.name.as_bytes()])
    }
}

/// Bumped when parsing or chunking changes, so re-ingesting re-parses instead of skipping.
const PARSER_VERSION: u32 = 1;

/// Files under `paths` (folders walked recursively, hidden files skipped, sorted) that clerk can
/// read, as inputs whose ids are paths relative to the folder given (a file given directly keeps
/// its name).
pub fn collect_files(paths: &[PathBuf], kind: Option<Kind>) -> Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for root in paths {
        let meta = std::fs::metadata(root).map_err(|e| RetrievalError::Io {
            path: root.clone(),
            source: e,
        })?;
        if meta.is_file() {
            let id = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| root.display().to_string());
            inputs.push(read_input(root, id, kind)?);
            continue;
        }
        let mut files = Vec::new();
        walk(root, &mut files)?;
        files.sort();
        for file in files {
            if Format::from_name(&file.to_string_lossy()).is_none() {
                continue;
            }
            let rel = file.strip_prefix(root).unwrap_or(&file);
            let id = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            inputs.push(read_input(&file, id, kind)?);
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |e| RetrievalError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if entry.file_type().map_err(io)?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn read_input(path: &Path, id: String, kind: Option<Kind>) -> Result<Input> {
    let content = std::fs::read(path).map_err(|e| RetrievalError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(Input {
        id,
        name: path.display().to_string(),
        content,
        format: None,
        kind,
    })
}

/// Parses one input into its chunks.
pub fn parse(input: &Input) -> std::result::Result<Vec<Chunk>, ParseError> {
    let err = |line: Option<usize>, field: Option<String>, message: String| ParseError {
        file: input.name.clone(),
        line,
        field,
        message,
    };
    let format = input
        .format
        .or_else(|| Format::from_name(&input.name))
        .ok_or_else(|| {
            err(
                None,
                None,
                "cannot tell the format from the name; give one (csv, json, jsonl, markdown, text, html)"
                    .into(),
            )
        })?;
    let text = std::str::from_utf8(&input.content).map_err(|e| {
        let line = input.content[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        err(Some(line), None, "not valid UTF-8".into())
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ctx = Ctx { input };
    let chunks = match format {
        Format::Csv => ctx.csv(text)?,
        Format::Json => ctx.json(text)?,
        Format::Jsonl => ctx.jsonl(text)?,
        Format::Markdown => ctx.markdown(text, 1)?,
        Format::Text => {
            if text.lines().any(|l| heading(l).is_some()) {
                ctx.markdown(text, 1)?
            } else {
                ctx.plain(text)?
            }
        }
        Format::Html => ctx.markdown(&html_to_text(text), 1)?,
    };
    if let Some(kind) = input.kind {
        if let Some(other) = chunks.iter().find(|c| c.kind != kind) {
            return Err(err(
                other.source.line,
                None,
                format!(
                    "holds {} entries, but kind {kind} was asked for",
                    other.kind
                ),
            ));
        }
    }
    if chunks.is_empty() {
        return Err(err(None, None, "holds nothing to index".into()));
    }
    Ok(chunks)
}

struct Ctx<'a> {
    input: &'a Input,
}

impl Ctx<'_> {
    fn err(
        &self,
        line: Option<usize>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> ParseError {
        ParseError {
            file: self.input.name.clone(),
            line,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    fn title_from_name(&self) -> String {
        let stem = Path::new(&self.input.id)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.input.id.clone());
        let mut title = stem.replace(['-', '_'], " ");
        if let Some(first) = title.get(..1) {
            title = first.to_uppercase() + &title[1..];
        }
        title
    }

    // ---- JSON ---------------------------------------------------------------------------------

    fn json(&self, text: &str) -> std::result::Result<Vec<Chunk>, ParseError> {
        // The shape decides the reader; the typed second pass gives line numbers and field paths.
        let value: Value = serde_json::from_str(text)
            .map_err(|e| self.err(Some(e.line()), None, format!("invalid JSON: {e}")))?;
        let looks_faq = |items: &[Value]| {
            items
                .first()
                .and_then(Value::as_object)
                .is_some_and(|o| o.contains_key("question"))
        };
        match &value {
            Value::Array(items) if looks_faq(items) => {
                let pairs: Vec<RawQa> = self.typed(text)?;
                self.faq_pairs(pairs.into_iter().map(|p| (p, None)).collect())
            }
            Value::Array(_) => {
                let products: Vec<RawProduct> = self.typed(text)?;
                self.products(
                    products
                        .into_iter()
                        .enumerate()
                        .map(|(i, p)| (p, None, format!("[{i}]")))
                        .collect(),
                )
            }
            Value::Object(map) => {
                if let Some(Value::Object(_)) = map.get("products") {
                    let db: Tau2Db = self.typed(text)?;
                    return self.tau2(db);
                }
                if map.contains_key("products")
                    && (map.contains_key("faq") || map.contains_key("questions"))
                {
                    // One would be read and the other dropped without a word.
                    return Err(self.err(
                        None,
                        Some("products"),
                        "a file holds either `products` or `faq`, not both; split it in two",
                    ));
                }
                if let Some(Value::Array(items)) = map.get("faq").or_else(|| map.get("questions")) {
                    if looks_faq(items) {
                        let wrapped: FaqFile = self.typed(text)?;
                        return self
                            .faq_pairs(wrapped.faq.into_iter().map(|p| (p, None)).collect());
                    }
                }
                if let Some(Value::Array(_)) = map.get("products") {
                    let wrapped: ProductsFile = self.typed(text)?;
                    return self.products(
                        wrapped
                            .products
                            .into_iter()
                            .enumerate()
                            .map(|(i, p)| (p, None, format!("products[{i}]")))
                            .collect(),
                    );
                }
                if map.contains_key("name") {
                    let product: RawProduct = self.typed(text)?;
                    return self.products(vec![(product, Some(1), String::new())]);
                }
                Err(self.err(
                    Some(1),
                    None,
                    "expected products (an array, {\"products\": [...]}, or a tau2 db.json) or FAQ pairs ({\"faq\": [{\"question\", \"answer\"}]})",
                ))
            }
            _ => Err(self.err(Some(1), None, "expected a JSON array or object")),
        }
    }

    fn typed<T: for<'de> Deserialize<'de>>(
        &self,
        text: &str,
    ) -> std::result::Result<T, ParseError> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            self.err(
                Some(inner.line()),
                (path != ".").then_some(path.as_str()),
                strip_position(&inner.to_string()),
            )
        })
    }

    fn jsonl(&self, text: &str) -> std::result::Result<Vec<Chunk>, ParseError> {
        let mut products = Vec::new();
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|e| {
                self.err(
                    Some(n),
                    None,
                    format!("invalid JSON: {}", strip_position(&e.to_string())),
                )
            })?;
            let typed_err = |e: serde_path_to_error::Error<serde_json::Error>| {
                let path = e.path().to_string();
                self.err(
                    Some(n),
                    (path != ".").then_some(path.as_str()),
                    strip_position(&e.into_inner().to_string()),
                )
            };
            if value.get("question").is_some() {
                let qa: RawQa =
                    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(line))
                        .map_err(typed_err)?;
                pairs.push((qa, Some(n)));
            } else {
                let p: RawProduct =
                    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(line))
                        .map_err(typed_err)?;
                products.push((p, Some(n), format!("line {n}")));
            }
        }
        let mut chunks = self.products(products)?;
        if !pairs.is_empty() {
            chunks.extend(self.faq_pairs(pairs)?);
        }
        Ok(chunks)
    }

    // ---- products -----------------------------------------------------------------------------

    fn products(
        &self,
        products: Vec<(RawProduct, Option<usize>, String)>,
    ) -> std::result::Result<Vec<Chunk>, ParseError> {
        let mut seen = BTreeSet::new();
        let mut chunks = Vec::with_capacity(products.len());
        for (raw, line, locator) in products {
            let id = match raw.id {
                Some(id) => id.0,
                None => slug(&raw.name),
            };
            if id.is_empty() {
                return Err(self.err(
                    line,
                    Some("id"),
                    format!("product {locator} has an empty id and name"),
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(self.err(
                    line,
                    Some("id"),
                    format!("duplicate product id `{id}` ({locator})"),
                ));
            }
            if raw.name.trim().is_empty() {
                return Err(self.err(
                    line,
                    Some("name"),
                    format!("product `{id}` has an empty name"),
                ));
            }
            let variants: Vec<Variant> = raw
                .variants
                .into_iter()
                .map(|v| Variant {
                    options: texts(v.options),
                    price: v.price.map(|p| p.0),
                    stock: v.stock,
                    available: v.available,
                })
                .collect();
            let product = Product {
                id,
                name: raw.name.trim().to_string(),
                description: raw.description,
                category: raw.category.filter(|c| !c.trim().is_empty()),
                price: raw.price.map(|p| p.0),
                currency: raw.currency,
                stock: raw.stock,
                url: raw.url,
                attributes: texts(raw.attributes),
                variants,
            };
            let source = Source {
                file: self.input.name.clone(),
                locator: if locator.is_empty() {
                    format!("product {}", product.id)
                } else {
                    locator
                },
                line,
            };
            chunks.push(product_chunk(&self.input.id, product, source)?);
        }
        Ok(chunks)
    }

    fn tau2(&self, db: Tau2Db) -> std::result::Result<Vec<Chunk>, ParseError> {
        let mut chunks = Vec::with_capacity(db.products.len());
        for (key, p) in db.products {
            let variants = p
                .variants
                .into_values()
                .map(|v| Variant {
                    options: texts(v.options),
                    price: Some(v.price.0),
                    stock: None,
                    available: Some(v.available),
                })
                .collect();
            let product = Product {
                id: p.product_id.map(|i| i.0).unwrap_or(key.clone()),
                name: p.name,
                description: String::new(),
                category: None,
                price: None,
                currency: Some("USD".into()),
                stock: None,
                url: None,
                attributes: BTreeMap::new(),
                variants,
            };
            let source = Source {
                file: self.input.name.clone(),
                locator: format!("products.{key}"),
                line: None,
            };
            chunks.push(product_chunk(&self.input.id, product, source)?);
        }
        Ok(chunks)
    }

    // ---- CSV ----------------------------------------------------------------------------------

    fn csv(&self, text: &str) -> std::result::Result<Vec<Chunk>, ParseError> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| self.err(Some(1), None, format!("unreadable header row: {e}")))?
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.as_str()));
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map(|p| p.line() as usize);
                self.err(line, None, format!("bad CSV row: {e}"))
            })?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            rows.push((line, record));
        }
        if let (Some(q), Some(a)) = (col(&["question", "q"]), col(&["answer", "a"])) {
            let mut pairs = Vec::new();
            for (line, r) in rows {
                pairs.push((
                    RawQa {
                        question: r.get(q).unwrap_or_default().to_string(),
                        answer: r.get(a).unwrap_or_default().to_string(),
                    },
                    Some(line),
                ));
            }
            return self.faq_pairs(pairs);
        }
        let name_col = col(&["name", "title", "product_name"]).ok_or_else(|| {
            self.err(
                Some(1),
                Some("name"),
                "a products CSV needs a `name` column (a FAQ CSV needs `question` and `answer`)",
            )
        })?;
        let id_col = col(&["id", "product_id", "handle"]);
        let known = |h: &str| {
            matches!(
                h,
                "id" | "product_id"
                    | "handle"
                    | "name"
                    | "title"
                    | "product_name"
                    | "description"
                    | "body"
                    | "category"
                    | "type"
                    | "price"
                    | "currency"
                    | "stock"
                    | "inventory"
                    | "quantity"
                    | "url"
                    | "link"
                    | "sku"
                    | "variant_id"
                    | "item_id"
                    | "options"
                    | "available"
            ) || h.starts_with("option:")
        };
        // Rows sharing an id are the variants of one product, in the order first seen.
        let mut order: Vec<String> = Vec::new();
        let mut grouped: BTreeMap<String, (usize, RawProduct)> = BTreeMap::new();
        for (line, r) in rows {
            let get = |c: Option<usize>| {
                c.and_then(|c| r.get(c))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            let field_err = |field: &str, msg: String| self.err(Some(line), Some(field), msg);
            let name = get(Some(name_col)).ok_or_else(|| field_err("name", "empty name".into()))?;
            let id = get(id_col)
                .map(str::to_string)
                .unwrap_or_else(|| slug(name));
            let parse_price = |field: &str| -> std::result::Result<Option<f64>, ParseError> {
                match get(col(&[field])) {
                    None => Ok(None),
                    Some(s) => parse_money(s).map(Some).map_err(|m| field_err(field, m)),
                }
            };
            let price = parse_price("price")?;
            let stock = match get(col(&["stock", "inventory", "quantity"])) {
                None => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| {
                    field_err("stock", format!("`{s}` is not a whole number of units"))
                })?),
            };
            let available = match get(col(&["available"])) {
                None => None,
                Some(s) => Some(parse_bool(s).ok_or_else(|| {
                    field_err("available", format!("`{s}` is not true or false"))
                })?),
            };
            let mut options = BTreeMap::new();
            if let Some(s) = get(col(&["options"])) {
                for pair in s.split(';').filter(|p| !p.trim().is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        field_err("options", format!("`{pair}` is not name=value"))
                    })?;
                    options.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
                }
            }
            let mut attributes = BTreeMap::new();
            for (i, h) in headers.iter().enumerate() {
                let Some(v) = get(Some(i)) else { continue };
                if let Some(opt) = h.strip_prefix("option:") {
                    options.insert(opt.to_string(), Value::String(v.to_string()));
                } else if !known(h) {
                    attributes.insert(h.clone(), Value::String(v.to_string()));
                }
            }
            let sku = get(col(&["sku", "variant_id", "item_id"]));
            let entry = grouped.entry(id.clone()).or_insert_with(|| {
                order.push(id.clone());
                (
                    line,
                    RawProduct {
                        id: Some(IdValue(id.clone())),
                        name: name.to_string(),
                        description: get(col(&["description", "body"]))
                            .unwrap_or_default()
                            .to_string(),
                        category: get(col(&["category", "type"])).map(str::to_string),
                        price: None,
                        currency: get(col(&["currency"])).map(str::to_string),
                        stock: None,
                        url: get(col(&["url", "link"])).map(str::to_string),
                        attributes: BTreeMap::new(),
                        variants: Vec::new(),
                    },
                )
            });
            entry.1.attributes.extend(attributes);
            if sku.is_some() || !options.is_empty() {
                entry.1.variants.push(RawVariant {
                    sku: sku.map(|s| IdValue(s.to_string())),
                    options,
                    price: price.map(Price),
                    stock,
                    available,
                });
            } else if entry.0 != line {
                // A second row for the product, naming no variant: which row's price and name
                // hold would be a guess, so neither does.
                return Err(field_err(
                    "id",
                    format!(
                        "product `{id}` is also on line {}; rows sharing an id must each name a \
                         variant (sku or options)",
                        entry.0
                    ),
                ));
            } else {
                entry.1.price = price.map(Price);
                entry.1.stock = stock;
            }
        }
        let products = order
            .into_iter()
            .filter_map(|id| grouped.remove(&id))
            .map(|(line, p)| (p, Some(line), format!("row at line {line}")))
            .collect();
        self.products(products)
    }

    // ---- FAQ and pages ------------------------------------------------------------------------

    fn faq_pairs(
        &self,
        pairs: Vec<(RawQa, Option<usize>)>,
    ) -> std::result::Result<Vec<Chunk>, ParseError> {
        let context = "Frequently asked questions".to_string();
        let mut chunks = Vec::new();
        for (i, (qa, line)) in pairs.into_iter().enumerate() {
            let question = qa.question.trim();
            let answer = qa.answer.trim();
            if question.is_empty() {
                return Err(self.err(
                    line,
                    Some("question"),
                    format!("entry {} has an empty question", i + 1),
                ));
            }
            if answer.is_empty() {
                return Err(self.err(
                    line,
                    Some("answer"),
                    format!("`{question}` has an empty answer"),
                ));
            }
            let source = Source {
                file: self.input.name.clone(),
                locator: match line {
                    Some(l) => format!("line {l}"),
                    None => format!("entry {}", i + 1),
                },
                line,
            };
            self.push_windows(&mut chunks, Kind::Faq, question, &context, answer, source);
        }
        Ok(chunks)
    }

    /// Markdown (and HTML and headed text, once converted): sections by heading. A page whose
    /// headings are mostly questions, or whose name says FAQ, is a FAQ: one entry per question.
    fn markdown(
        &self,
        text: &str,
        first_line: usize,
    ) -> std::result::Result<Vec<Chunk>, ParseError> {
        let sections = sections(text, first_line);
        let headings: Vec<&Section> = sections.iter().filter(|s| s.level > 0).collect();
        let questions = headings.iter().filter(|s| is_question(&s.heading)).count();
        let named_faq = self.input.id.to_ascii_lowercase().contains("faq");
        let kind = match self.input.kind {
            Some(k) => k,
            None if named_faq || (questions >= 2 && questions * 2 >= headings.len()) => Kind::Faq,
            None => Kind::Policy,
        };
        if kind == Kind::Product {
            return Err(self.err(None, None, "products come from CSV or JSON, not from pages"));
        }
        let page_title = sections
            .iter()
            .find(|s| s.level == 1)
            .map(|s| s.heading.clone())
            .unwrap_or_else(|| self.title_from_name());
        // A heading a page repeats ("Cost" under "Europe" and again under "USA") gets its line in
        // its locator, so each passage can be cited and looked up on its own.
        let repeated = |heading: &str| sections.iter().filter(|s| s.heading == heading).count() > 1;
        let mut chunks = Vec::new();
        for s in &sections {
            let body = s.body.trim();
            if body.is_empty() {
                continue;
            }
            let title = if s.level == 0 || (s.level == 1 && s.heading == page_title) {
                page_title.clone()
            } else {
                s.heading.clone()
            };
            let source = Source {
                file: self.input.name.clone(),
                locator: if s.level == 0 {
                    "introduction".into()
                } else if repeated(&s.heading) {
                    format!("heading: {} (line {})", s.heading, s.line)
                } else {
                    format!("heading: {}", s.heading)
                },
                line: Some(s.line),
            };
            let context = if kind == Kind::Faq && page_title == title {
                String::new()
            } else {
                page_title.clone()
            };
            self.push_windows(&mut chunks, kind, &title, &context, body, source);
        }
        Ok(chunks)
    }

    fn plain(&self, text: &str) -> std::result::Result<Vec<Chunk>, ParseError> {
        let mut chunks = Vec::new();
        let title = self.title_from_name();
        let kind = self.input.kind.unwrap_or(Kind::Policy);
        let source = Source {
            file: self.input.name.clone(),
            locator: "text".into(),
            line: Some(1),
        };
        self.push_windows(&mut chunks, kind, &title, "", text.trim(), source);
        Ok(chunks)
    }

    fn push_windows(
        &self,
        chunks: &mut Vec<Chunk>,
        kind: Kind,
        title: &str,
        context: &str,
        body: &str,
        source: Source,
    ) {
        for (n, window) in windows(body, WINDOW_WORDS, OVERLAP_WORDS)
            .into_iter()
            .enumerate()
        {
            let mut source = source.clone();
            if n > 0 {
                let _ = write!(source.locator, " (part {})", n + 1);
            }
            chunks.push(Chunk {
                id: format!("{}#{}", self.input.id, chunks.len() + 1),
                document_id: self.input.id.clone(),
                kind,
                title: title.to_string(),
                context: context.to_string(),
                text: window.to_string(),
                source,
                product: None,
                dense_text: None,
            });
        }
    }
}

struct Product {
    id: String,
    name: String,
    description: String,
    category: Option<String>,
    price: Option<f64>,
    currency: Option<String>,
    stock: Option<u64>,
    url: Option<String>,
    attributes: BTreeMap<String, String>,
    variants: Vec<Variant>,
}

struct Variant {
    options: BTreeMap<String, String>,
    price: Option<f64>,
    stock: Option<u64>,
    available: Option<bool>,
}

/// A product as one passage: name, description, category, the values each option takes,
/// attributes, price range and availability. The facts ride along for filters and answers.
fn product_chunk(
    doc_id: &str,
    p: Product,
    source: Source,
) -> std::result::Result<Chunk, ParseError> {
    let prices: Vec<f64> = p
        .variants
        .iter()
        .filter_map(|v| v.price)
        .chain(p.price)
        .collect();
    let (price_min, price_max) = if prices.is_empty() {
        (0.0, 0.0)
    } else {
        (
            prices.iter().copied().fold(f64::INFINITY, f64::min),
            prices.iter().copied().fold(0.0, f64::max),
        )
    };
    // Unknown if any variant's is; an error, not a wrapped or panicking sum, if it overflows.
    let mut variant_stock = Some(0u64);
    for v in &p.variants {
        variant_stock = match (variant_stock, v.stock) {
            (Some(sum), Some(s)) => Some(sum.checked_add(s).ok_or_else(|| ParseError {
                file: source.file.clone(),
                line: source.line,
                field: Some("stock".into()),
                message: format!("the variants' stock of `{}` adds up past any count", p.name),
            })?),
            _ => None,
        };
    }
    let stock = p.stock.or(variant_stock);
    let any_available = p
        .variants
        .iter()
        .any(|v| v.available.unwrap_or(v.stock.is_none_or(|s| s > 0)));
    let in_stock = match (stock, p.variants.is_empty()) {
        (Some(s), _) => s > 0,
        (None, false) => any_available,
        (None, true) => true,
    };
    let mut options: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for v in &p.variants {
        for (k, val) in &v.options {
            options.entry(k).or_default().insert(val);
        }
    }
    let mut dense = format!("{}. {}", p.name, p.category.as_deref().unwrap_or(""));
    if !p.description.trim().is_empty() {
        dense = format!("{dense}. {}", p.description.trim());
    }
    if !p.attributes.is_empty() {
        let values: Vec<&str> = p.attributes.values().map(String::as_str).collect();
        dense = format!("{dense} {}", values.join(", "));
    }
    let mut text = String::new();
    if !p.description.trim().is_empty() {
        text.push_str(p.description.trim());
        text.push('\n');
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, vals)| {
                format!(
                    "{k}: {}",
                    vals.iter().copied().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        let _ = writeln!(text, "Options: {}.", opts.join("; "));
    }
    if !p.attributes.is_empty() {
        let attrs: Vec<String> = p
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(text, "Details: {}.", attrs.join("; "));
    }
    let cur = p.currency.as_deref().unwrap_or("");
    if !prices.is_empty() {
        if (price_max - price_min).abs() < 0.005 {
            let _ = write!(text, "Price: {price_min:.2} {cur}.");
        } else {
            let _ = write!(text, "Price: {price_min:.2} to {price_max:.2} {cur}.");
        }
    }
    text.push_str(if in_stock {
        " In stock."
    } else {
        " Out of stock."
    });
    Ok(Chunk {
        id: format!("{doc_id}#{}", p.id),
        document_id: doc_id.to_string(),
        kind: Kind::Product,
        title: p.name,
        context: p.category.clone().unwrap_or_else(|| "Products".into()),
        text: text.trim().to_string(),
        source,
        product: Some(ProductFacts {
            product_id: p.id,
            category: p.category,
            price_min,
            price_max,
            currency: p.currency,
            in_stock,
            stock,
            url: p.url,
        }),
        dense_text: Some(dense),
    })
}

struct Section {
    level: usize,
    heading: String,
    line: usize,
    body: String,
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    let level = trimmed.chars().take_while(|&c| c == '#').count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &trimmed[level..];
    if !rest.starts_with(' ') && !rest.is_empty() {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim();
    (!text.is_empty()).then_some((level, text))
}

/// Splits Markdown at ATX headings (outside fenced code). Text before the first heading is a
/// level-0 section.
fn sections(text: &str, first_line: usize) -> Vec<Section> {
    let mut out = vec![Section {
        level: 0,
        heading: String::new(),
        line: first_line,
        body: String::new(),
    }];
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        match heading(line).filter(|_| !fenced) {
            Some((level, h)) => out.push(Section {
                level,
                heading: h.to_string(),
                line: first_line + i,
                body: String::new(),
            }),
            None => {
                let s = out.last_mut().expect("starts with one section");
                s.body.push_str(line);
                s.body.push('\n');
            }
        }
    }
    out
}

fn is_question(h: &str) -> bool {
    h.ends_with('?') || h.ends_with('？') || h.starts_with('¿')
}

/// Overlapping windows of at most `max` words (a CJK character counts as a word), cut at word
/// boundaries; text that fits is one window.
fn windows(text: &str, max: usize, overlap: usize) -> Vec<&str> {
    if word_count(text) <= max {
        return vec![text];
    }
    // Byte ranges of the units word_count counts.
    let mut units: Vec<(usize, usize)> = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if super::text::is_cjk(c) {
            if let Some(s) = start.take() {
                units.push((s, i));
            }
            units.push((i, i + c.len_utf8()));
        } else if c.is_whitespace() {
            if let Some(s) = start.take() {
                units.push((s, i));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        units.push((s, text.len()));
    }
    let step = max.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut a = 0;
    while a < units.len() {
        let b = (a + max).min(units.len());
        out.push(&text[units[a].0..units[b - 1].1]);
        if b == units.len() {
            break;
        }
        a += step;
    }
    out
}

pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Option and attribute values as text: strings as they are, numbers and the rest as JSON.
fn texts(map: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

fn parse_money(s: &str) -> std::result::Result<f64, String> {
    let cleaned: String = s
        .chars()
        .filter(|c| !matches!(c, '$' | '€' | '£' | '¥' | ',' | ' '))
        .collect();
    match cleaned.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a price (a non-negative number)")),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "y" => Some(true),
        "false" | "no" | "0" | "n" => Some(false),
        _ => None,
    }
}

// ---- raw shapes ---------------------------------------------------------------------------------

/// An id given as a string or a number.
struct IdValue(String);

impl<'de> Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if !s.trim().is_empty() => Ok(IdValue(s.trim().to_string())),
            Value::Number(n) => Ok(IdValue(n.to_string())),
            other => Err(de::Error::custom(format!(
                "expected a non-empty string or number id, got {other}"
            ))),
        }
    }
}

/// A non-negative finite price, given as a number or a numeric string.
struct Price(f64);

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => match n.as_f64() {
                Some(v) if v >= 0.0 && v.is_finite() => Ok(Price(v)),
                _ => Err(de::Error::custom(format!(
                    "`{n}` is not a price (a non-negative number)"
                ))),
            },
            Value::String(s) => parse_money(&s).map(Price).map_err(de::Error::custom),
            other => Err(de::Error::custom(format!("expected a price, got {other}"))),
        }
    }
}

#[derive(Deserialize)]
struct RawProduct {
    #[serde(default, alias = "product_id")]
    id: Option<IdValue>,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    price: Option<Price>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    stock: Option<u64>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, Value>,
    #[serde(default)]
    variants: Vec<RawVariant>,
}

#[derive(Deserialize)]
struct RawVariant {
    #[serde(default, alias = "item_id", alias = "id")]
    #[allow(dead_code)]
    sku: Option<IdValue>,
    #[serde(default)]
    options: BTreeMap<String, Value>,
    #[serde(default)]
    price: Option<Price>,
    #[serde(default)]
    stock: Option<u64>,
    #[serde(default)]
    available: Option<bool>,
}

#[derive(Deserialize)]
struct ProductsFile {
    products: Vec<RawProduct>,
}

#[derive(Deserialize)]
struct RawQa {
    question: String,
    answer: String,
}

#[derive(Deserialize)]
struct FaqFile {
    #[serde(alias = "questions")]
    faq: Vec<RawQa>,
}

#[derive(Deserialize)]
struct Tau2Db {
    products: BTreeMap<String, Tau2Product>,
}

#[derive(Deserialize)]
struct Tau2Product {
    name: String,
    #[serde(default)]
    product_id: Option<IdValue>,
    variants: BTreeMap<String, Tau2Variant>,
}

#[derive(Deserialize)]
struct Tau2Variant {
    #[serde(default)]
    options: BTreeMap<String, Value>,
    available: bool,
    price: Price,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, content: &str) -> Input {
        Input {
            id: name.into(),
            name: name.into(),
            content: content.as_bytes().to_vec(),
            format: None,
            kind: None,
        }
    }

    #[test]
    fn csv_rows_group_into_variants() {
        let csv = "id,name,category,price,stock,sku,options,material\n\
                   p1,Rain Jacket,Apparel,129,3,RJ-M,size=M;color=black,nylon\n\
                   p1,Rain Jacket,Apparel,139,0,RJ-L,size=L;color=black,nylon\n\
                   p2,Mug,Kitchen,12.50,0,,,\n";
        let chunks = parse(&input("products.csv", csv)).unwrap();
        assert_eq!(chunks.len(), 2);
        let jacket = chunks[0].product.as_ref().unwrap();
        assert_eq!(
            (
                jacket.price_min,
                jacket.price_max,
                jacket.in_stock,
                jacket.stock
            ),
            (129.0, 139.0, true, Some(3))
        );
        assert!(chunks[0].text.contains("size: L, M"), "{}", chunks[0].text);
        assert!(chunks[0].text.contains("material: nylon"));
        assert!(!chunks[1].product.as_ref().unwrap().in_stock);
        assert_eq!(chunks[1].source.line, Some(4));
    }

    #[test]
    fn bad_csv_price_names_line_and_field() {
        let csv = "name,price\nMug,12\nBowl,twelve\n";
        let e = parse(&input("p.csv", csv)).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(3), Some("price")),
            "{e}"
        );
    }

    /// What used to vanish without a word is refused, naming where: a second row for one product
    /// that names no variant (its price overwrote the first's), a file with both `products` and
    /// `faq` (the products were dropped), and variants' stock adding up past u64 (a panic in
    /// debug builds, "out of stock" in release ones).
    #[test]
    fn ambiguous_or_overflowing_catalogues_are_refused() {
        let e = parse(&input("p.csv", "id,name,price\np1,Mug,12\np1,Bowl,8\n")).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(3), Some("id")), "{e}");
        assert!(e.message.contains("line 2"), "{e}");
        let both = r#"{"products": [{"name": "Mug", "price": 5}], "faq": [{"question": "Q?", "answer": "A."}]}"#;
        let e = parse(&input("both.json", both)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("products"), "{e}");
        let huge = format!(
            "id,name,price,stock,sku\np1,Mug,5,{},M1\np1,Mug,5,1,M2\n",
            u64::MAX
        );
        let e = parse(&input("s.csv", &huge)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("stock"), "{e}");
    }

    #[test]
    fn bad_json_field_names_line_and_path() {
        let json = "{\"products\": [\n {\"id\": \"a\", \"name\": \"A\", \"price\": 1},\n {\"id\": \"b\", \"name\": \"B\", \"price\": -3}\n]}";
        let e = parse(&input("p.json", json)).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.field.as_deref(), Some("products[1].price"), "{e}");
        let e = parse(&input("p.jsonl", "{\"name\": \"A\"}\n{\"id\": 3}\n")).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("name"), "{e}");
    }

    #[test]
    fn markdown_faq_and_policy_sections() {
        let faq =
            "# FAQ\n\n## How long does shipping take?\nThree days.\n\n## ¿Aceptan PayPal?\nSí.\n";
        let chunks = parse(&input("help.md", faq)).unwrap();
        assert_eq!(
            chunks
                .iter()
                .map(|c| (c.kind, c.title.as_str()))
                .collect::<Vec<_>>(),
            [
                (Kind::Faq, "How long does shipping take?"),
                (Kind::Faq, "¿Aceptan PayPal?")
            ]
        );
        let policy = "# Returns policy\nIntro text.\n## Return window\nThirty days.\n## Refunds\nFive days.\n";
        let chunks = parse(&input("returns.md", policy)).unwrap();
        assert_eq!(
            chunks.iter().map(|c| c.title.as_str()).collect::<Vec<_>>(),
            ["Returns policy", "Return window", "Refunds"]
        );
        assert!(chunks
            .iter()
            .all(|c| c.kind == Kind::Policy && c.context == "Returns policy"));
        assert_eq!(chunks[1].source.line, Some(3));
    }

    #[test]
    fn a_repeated_heading_gets_a_locator_of_its_own() {
        let md = "# Shipping\n\n## Europe\n\n### Cost\n\nFree over 50.\n\n## USA\n\n### Cost\n\nFree over 75.\n\n## Times\n\nTwo days.\n";
        let chunks = parse(&input("shipping.md", md)).unwrap();
        let locators: Vec<&str> = chunks.iter().map(|c| c.source.locator.as_str()).collect();
        assert_eq!(
            locators,
            [
                "heading: Cost (line 5)",
                "heading: Cost (line 11)",
                "heading: Times"
            ],
            "{chunks:?}"
        );
        assert!(chunks[1].text.contains("75"));
    }

    #[test]
    fn long_sections_become_overlapping_windows() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let w = windows(&text, 150, 30);
        // Windows start every 120 words: 0, 120, 240, 360.
        assert_eq!(w.len(), 4);
        assert!(w[0].starts_with("w0 ") && w[0].ends_with(" w149"));
        assert!(w[1].starts_with("w120 ") && w[1].ends_with(" w269"));
        assert!(w[3].starts_with("w360 ") && w[3].ends_with("w399"));
        let zh = "退".repeat(200);
        assert_eq!(windows(&zh, 150, 30).len(), 2);
    }

    #[test]
    fn tau2_products_read_options_and_availability() {
        let db = r#"{"products": {"1": {"name": "Water Bottle", "product_id": "1", "variants": {
            "11": {"item_id": "11", "options": {"material": "glass", "capacity": "500ml"}, "available": false, "price": 20.5},
            "12": {"item_id": "12", "options": {"material": "steel", "capacity": "1000ml"}, "available": true, "price": 30}}}},
            "users": {}, "orders": {}}"#;
        let chunks = parse(&input("db.json", db)).unwrap();
        let p = chunks[0].product.as_ref().unwrap();
        assert_eq!((p.price_min, p.price_max, p.in_stock), (20.5, 30.0, true));
        assert!(
            chunks[0].text.contains("material: glass, steel"),
            "{}",
            chunks[0].text
        );
    }

    #[test]
    fn html_pages_chunk_by_heading() {
        let html = "<h1>Warranty</h1><p>Intro.</p><h2>Claims</h2><p>Email us &amp; wait.</p>";
        let chunks = parse(&input("warranty.html", html)).unwrap();
        assert_eq!(chunks.last().unwrap().title, "Claims");
        assert_eq!(chunks.last().unwrap().text, "Email us & wait.");
    }
}
