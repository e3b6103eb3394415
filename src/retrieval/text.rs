//! Text helpers shared by ingestion and search: the full-text tokenizer (words for alphabetic
//! scripts, overlapping character bigrams for Chinese and Japanese), a stable content hash, word
//! counting for chunk budgets, and HTML to Markdown-ish text.

use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, Stemmer, StopWordFilter,
    TextAnalyzer, Token, TokenStream, Tokenizer,
};

/// Name under which [`analyzer`] is registered in the index.
pub const ANALYZER: &str = "clerk";

/// The analyzer for titles and passages: [`ShopTokenizer`], lower-cased, accents folded (so "envío"
/// matches "envio"), and English stems (so "jackets" matches "jacket"; other Latin-script words pass
/// through the stemmer mostly unchanged).
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(ShopTokenizer::default())
        .filter(RemoveLongFilter::limit(48))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|w| w.to_string()),
        ))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// Function words of English and Spanish (accents folded): they match nearly every passage, so
/// in a chat-style question ("do you have something for...") they only add noise to BM25.
const STOP_WORDS: &[&str] = &[
    "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "get", "got", "had", "has", "have", "how", "i",
    "if", "im", "in", "is", "it", "its", "just", "me", "my", "of", "on", "or", "our", "please",
    "so", "some", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to",
    "us", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with",
    "would", "you", "your", "yours", "el", "la", "los", "las", "un", "una", "unos", "unas", "de",
    "del", "al", "y", "o", "que", "en", "mi", "mis", "tu", "su", "sus", "es", "se", "lo", "le",
    "por", "para", "con", "como", "cual", "cuando", "donde", "puedo", "hay", "si", "me", "yo",
    "hola", "pero", "mas", "muy", "ya", "este", "esta", "eso", "esa",
];

/// The terms a query or passage turns into, as the index sees them.
pub fn terms(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// Chinese, Japanese and Korean characters have no spaces between words; a dictionary segmenter is a
/// large dependency, and overlapping bigrams (what Lucene's CJK analyzer does) find the same passages
/// for shop-sized texts.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B-F and compatibility supplement
}

/// Splits into alphanumeric words, and runs of CJK characters into overlapping bigrams (a lone CJK
/// character is its own token).
#[derive(Clone, Default)]
pub struct ShopTokenizer {
    tokens: Vec<Token>,
}

pub struct ShopTokenStream<'a> {
    tokens: &'a mut [Token],
    next: usize,
}

impl Tokenizer for ShopTokenizer {
    type TokenStream<'a> = ShopTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> ShopTokenStream<'a> {
        self.tokens.clear();
        let push = |tokens: &mut Vec<Token>, from: usize, to: usize| {
            let position = tokens.len();
            tokens.push(Token {
                offset_from: from,
                offset_to: to,
                position,
                text: text[from..to].to_string(),
                position_length: 1,
            });
        };
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let end_of = |i: usize| chars.get(i + 1).map_or(text.len(), |&(o, _)| o);
        let mut i = 0;
        while i < chars.len() {
            let (start, c) = chars[i];
            if is_cjk(c) {
                let mut j = i;
                while j + 1 < chars.len() && is_cjk(chars[j + 1].1) {
                    j += 1;
                }
                if j == i {
                    push(&mut self.tokens, start, end_of(i));
                } else {
                    for (k, &(offset, _)) in chars.iter().enumerate().take(j).skip(i) {
                        push(&mut self.tokens, offset, end_of(k + 1));
                    }
                }
                i = j + 1;
            } else if c.is_alphanumeric() {
                let mut j = i;
                while j + 1 < chars.len()
                    && chars[j + 1].1.is_alphanumeric()
                    && !is_cjk(chars[j + 1].1)
                {
                    j += 1;
                }
                push(&mut self.tokens, start, end_of(j));
                i = j + 1;
            } else {
                i += 1;
            }
        }
        ShopTokenStream {
            tokens: &mut self.tokens,
            next: 0,
        }
    }
}

impl TokenStream for ShopTokenStream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

/// A length measure for chunk budgets that treats each CJK character as a word, since the embedder
/// spends roughly one token on each.
pub fn word_count(text: &str) -> usize {
    let mut count = 0;
    let mut in_word = false;
    for c in text.chars() {
        if is_cjk(c) {
            count += 1;
            in_word = false;
        } else if c.is_alphanumeric() {
            if !in_word {
                count += 1;
            }
            in_word = true;
        } else {
            in_word = false;
        }
    }
    count
}

/// FNV-1a, 64 bits: a content hash that is stable across builds and processes (std's hasher is not
/// promised to be), used to tell changed documents and chunks from unchanged ones.
pub fn content_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Visible text of an HTML page, with headings kept as Markdown headings so pages chunk by heading
/// like Markdown does. Scripts, styles and comments are dropped; common entities are decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    while i < html.len() {
        if lower[i..].starts_with("<!--") {
            i = lower[i..].find("-->").map_or(html.len(), |e| i + e + 3);
            continue;
        }
        // Like a browser, a `<` starts a tag only before a letter, `/`, `!` or `?`; otherwise
        // ("under 5 kg < 2 days", "waist <30in") it is text, and so is a tag that never closes.
        let opens_tag = html.as_bytes()[i] == b'<'
            && html
                .as_bytes()
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || matches!(b, b'/' | b'!' | b'?'));
        if html.as_bytes()[i] == b'<' && !opens_tag {
            out.push('<');
            i += 1;
            continue;
        }
        if opens_tag {
            let Some(end) = html[i..].find('>').map(|e| i + e) else {
                decode_entities(&html[i..], &mut out);
                break;
            };
            let tag = lower[i + 1..end].trim_start_matches('/');
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let closing = lower[i + 1..].starts_with('/');
            i = end + 1;
            match name.as_str() {
                "script" | "style" | "noscript" | "template" if !closing => {
                    let close = format!("</{name}");
                    i = lower[i..].find(&close).map_or(html.len(), |e| i + e);
                }
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                    out.push_str("\n\n");
                    if !closing {
                        let level = (name.as_bytes()[1] - b'0') as usize;
                        out.push_str(&"#".repeat(level));
                        out.push(' ');
                    }
                }
                "p" | "div" | "section" | "article" | "br" | "tr" | "ul" | "ol" | "table" => {
                    out.push('\n')
                }
                "li" if !closing => out.push_str("\n- "),
                "td" | "th" => out.push(' '),
                _ => {}
            }
            continue;
        }
        let next = html[i..].find(['<']).map_or(html.len(), |e| i + e);
        decode_entities(&html[i..next], &mut out);
        i = next;
    }
    // Collapse the whitespace HTML doesn't show, keeping paragraph breaks.
    let mut text = String::with_capacity(out.len());
    for line in out.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            if !text.ends_with("\n\n") && !text.is_empty() {
                text.push('\n');
            }
        } else {
            text.push_str(&line);
            text.push('\n');
        }
    }
    text.trim().to_string()
}

fn decode_entities(s: &str, out: &mut String) {
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // An entity is short: look for its `;` in the next dozen bytes, cut at a character
        // boundary (found by fuzzing: a multi-byte character there made the slice panic).
        let mut window = rest.len().min(12);
        while !rest.is_char_boundary(window) {
            window -= 1;
        }
        let Some(semi) = rest[..window].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (target `ingest`): an `&` followed by a multi-byte character
    /// within a dozen bytes.
    #[test]
    fn entities_next_to_multibyte_characters_do_not_panic() {
        let html = "<p>&&&&&&&&&&&&&&&&&&&&&&&&&&&&&&\u{5d7}1>Returns &amp;&#x4e2d; &\u{4e2d}\u{6587};</p>";
        let text = html_to_text(html);
        assert!(text.contains("\u{5d7}1>Returns &\u{4e2d}"), "{text}");
        assert!(text.ends_with("&\u{4e2d}\u{6587};"), "{text}");
    }

    #[test]
    fn chinese_becomes_bigrams_and_english_stems() {
        assert_eq!(terms("退货政策"), ["退货", "货政", "政策"]);
        assert_eq!(terms("Rain Jackets!"), ["rain", "jacket"]);
        assert_eq!(terms("envío de 2x 退"), ["envio", "2x", "退"]);
        assert_eq!(terms("How do I return my jacket?"), ["return", "jacket"]);
        assert_eq!(terms("買うUSB"), ["買う", "usb"]);
    }

    #[test]
    fn word_count_counts_cjk_characters() {
        assert_eq!(word_count("free shipping over $75"), 4);
        assert_eq!(word_count("退货政策 ok"), 5);
    }

    #[test]
    fn html_keeps_headings_and_drops_scripts() {
        let html = "<html><head><style>p{}</style><script>var x='<h1>';</script></head><body>\
            <h1>Returns</h1><p>Within 30&nbsp;days &amp; free.</p><!-- hidden --><h2>Refunds</h2>\
            <ul><li>Card</li><li>Gift&#39;s card</li></ul></body></html>";
        let text = html_to_text(html);
        assert_eq!(
            text,
            "# Returns\n\nWithin 30 days & free.\n\n## Refunds\n\n- Card\n- Gift's card"
        );
    }

    #[test]
    fn a_less_than_sign_that_opens_no_tag_is_text() {
        assert_eq!(
            html_to_text("<p>Parcels under 5 kg < 2 days.</p><p>Returns 30 days.</p>"),
            "Parcels under 5 kg < 2 days.\n\nReturns 30 days."
        );
        assert_eq!(
            html_to_text("<h1>Sizes</h1>Waist <30in: S. Waist 30-34in: M."),
            "# Sizes\n\nWaist <30in: S. Waist 30-34in: M."
        );
        // A tag that never closes keeps what follows as text.
        assert_eq!(html_to_text("Fits <b all sizes"), "Fits <b all sizes");
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(content_hash(&[b"ab", b"c"]), content_hash(&[b"a", b"bc"]));
        assert_eq!(content_hash(&[b"x"]), content_hash(&[b"x"]));
    }
}
