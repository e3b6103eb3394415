//! The demo shop that ships inside the binary, so `clerk serve` with no arguments has a shop to
//! answer from wherever it runs. The files are the ones in `demo/`, under the same ids
//! `clerk ingest demo/` gives them, so ingesting the folder after editing it replaces them.

use super::ingest::Input;

macro_rules! demo_files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/demo/", $path)))),*]
    };
}

const FILES: &[(&str, &str)] = demo_files![
    "catalog/products.json",
    "faq.md",
    "policies/privacy.md",
    "policies/returns-zh.md",
    "policies/returns.md",
    "policies/shipping-es.md",
    "policies/shipping.md",
    "policies/warranty.md",
];

/// The demo shop's files as inputs to [`super::Knowledge::ingest`].
pub fn inputs() -> Vec<Input> {
    FILES
        .iter()
        .map(|(path, text)| Input {
            id: path.to_string(),
            name: format!("demo/{path}"),
            content: text.as_bytes().to_vec(),
            format: None,
            kind: None,
        })
        .collect()
}

/// The demo catalogue (`demo/catalog/products.json`), which the demo shop's orders are made of.
pub fn catalog_json() -> &'static str {
    FILES[0].1
}
