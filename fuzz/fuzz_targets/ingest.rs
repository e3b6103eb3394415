//! Documents as an operator or the ingest API could hand them over, in every format and kind:
//! parsing gives chunks or a clear error, never a panic, and every chunk has text.
#![no_main]

use clerk::retrieval::document::Kind;
use clerk::retrieval::ingest::{parse, Format, Input};
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 6] = [
    Format::Csv,
    Format::Json,
    Format::Jsonl,
    Format::Markdown,
    Format::Text,
    Format::Html,
];

fuzz_target!(|data: &[u8]| {
    let (selector, content) = match data.split_first() {
        Some((s, rest)) => (*s as usize, rest),
        None => return,
    };
    let format = FORMATS[selector % FORMATS.len()];
    let kind = match (selector / FORMATS.len()) % 4 {
        0 => None,
        k => Some(Kind::ALL[k - 1]),
    };
    let input = Input {
        id: "fuzz/doc".into(),
        name: "doc".into(),
        content: content.to_vec(),
        format: Some(format),
        kind,
    };
    if let Ok(chunks) = parse(&input) {
        for c in &chunks {
            assert!(
                !c.embedding_text().trim().is_empty(),
                "{format:?}: an empty chunk"
            );
        }
    }
});
