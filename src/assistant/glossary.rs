//! The shopper's words for the things a shop sells and the topics of its policies, with the
//! English words catalogues and documents use for them (`things:`, `qualifiers:` and `topics:` in
//! `prompts/<lang>/assistant.yaml`). The catalogue and the embedder are English, so "¿Venden
//! mochilas?" or "头灯多少钱？" find no product by meaning or by word; read through the glossary
//! they ask for "backpack daypack" and "headlamp". Topics tell whether a passage is about what was
//! asked ("产品有保修吗？" is about the warranty, not the exchange policy the embedder found).
//!
//! Words are matched whole, longest entry first, and a matched span is not matched again
//! ("笔记本电脑" is a laptop, not a notebook; "linterna frontal" is one headlamp). Spanish entries
//! match by words, each also plural (+s, +es) and with or without accents; Chinese ones, which
//! have no spaces to go by, as substrings.

use std::collections::BTreeMap;

use super::lang::Lang;

/// What an entry of the glossary names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sort {
    Thing,
    Topic,
    Qualifier,
}

#[derive(Debug, Default)]
pub struct Glossary {
    /// (shopper's words, English words, what it names), longest first.
    entries: Vec<(Vec<String>, String, Sort)>,
    by_words: bool,
}

/// What a text asks for, in the catalogue's words.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// The things named, each as the English names a product may have ("backpack", "daypack",
    /// "sleeping bag"): a thing's entry lists them separated by commas.
    pub things: Vec<String>,
    /// English words that narrow them ("family", "winter").
    pub qualifiers: Vec<String>,
    /// English words of the policy topics named ("warranty", "international").
    pub topics: Vec<String>,
}

impl Found {
    /// The English query for a product search: things first, then qualifiers.
    pub fn query(&self) -> String {
        join(&[&self.things, &self.qualifiers])
    }

    /// The English query for a passage on the topics named: topics, then qualifiers.
    pub fn topic_query(&self) -> String {
        join(&[&self.topics, &self.qualifiers])
    }

    /// Whether a product called `title` is one of the things named: it has every word of one of
    /// their English names ("Emberline 20°F Down Sleeping Bag" is a sleeping bag; "Loft Insulated
    /// Sleeping Pad" is not, nor are "Cairn Merino Hiking Socks" hiking boots).
    pub fn names_thing(&self, title: &str) -> bool {
        let title = english_words(title);
        self.things.iter().any(|name| {
            let name = english_words(name);
            !name.is_empty() && name.iter().all(|w| title.contains(w))
        })
    }
}

/// Lowercased English words, a plural's "s" taken off.
fn english_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.strip_suffix('s')
                .filter(|s| s.len() > 1)
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

fn join(lists: &[&Vec<String>]) -> String {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Glossary {
    pub fn new(
        lang: Lang,
        things: &BTreeMap<String, String>,
        qualifiers: &BTreeMap<String, String>,
        topics: &BTreeMap<String, String>,
    ) -> Self {
        let by_words = lang != Lang::Zh;
        let key = |k: &str| -> Vec<String> {
            if by_words {
                words(k)
            } else {
                vec![k.to_lowercase()]
            }
        };
        let mut entries: Vec<(Vec<String>, String, Sort)> = [
            (things, Sort::Thing),
            (topics, Sort::Topic),
            (qualifiers, Sort::Qualifier),
        ]
        .into_iter()
        .flat_map(|(map, sort)| map.iter().map(move |(k, v)| (key(k), v.clone(), sort)))
        .filter(|(k, _, _)| !k.is_empty() && k.iter().all(|w| !w.is_empty()))
        .collect();
        // Longest first (by letters, then by words); of the same length, things, then topics.
        entries.sort_by_key(|(k, _, sort)| {
            (
                std::cmp::Reverse(k.iter().map(|w| w.chars().count()).sum::<usize>()),
                std::cmp::Reverse(k.len()),
                *sort,
            )
        });
        Self { entries, by_words }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The catalogue's words for what `text` names, each English word once, in the order found.
    pub fn find(&self, text: &str) -> Found {
        // (where in the text, English words, what it names)
        let mut hits: Vec<(usize, &str, Sort)> = Vec::new();
        if self.by_words {
            let mut text: Vec<Option<String>> = words(text).into_iter().map(Some).collect();
            for (key, english, sort) in &self.entries {
                let n = key.len();
                let mut i = 0;
                while i + n <= text.len() {
                    let hit = key
                        .iter()
                        .zip(&text[i..i + n])
                        .all(|(k, t)| t.as_deref().is_some_and(|t| plural_of(t, k)));
                    if hit {
                        hits.push((i, english, *sort));
                        text[i..i + n].iter_mut().for_each(|t| *t = None);
                        i += n;
                    } else {
                        i += 1;
                    }
                }
            }
        } else {
            let mut text = text.to_lowercase();
            for (key, english, sort) in &self.entries {
                let key = &key[0];
                while let Some(at) = text.find(key.as_str()) {
                    hits.push((text[..at].chars().count(), english, *sort));
                    // Blanked char for char, so positions (in chars) stay where they were and
                    // the span is not matched again: no entry holds a NUL.
                    let blank = "\0".repeat(key.chars().count());
                    text.replace_range(at..at + key.len(), &blank);
                }
            }
        }
        hits.sort_by_key(|(at, _, _)| *at);
        let mut found = Found::default();
        for (_, english, sort) in hits {
            let list = match sort {
                Sort::Thing => &mut found.things,
                Sort::Topic => &mut found.topics,
                Sort::Qualifier => &mut found.qualifiers,
            };
            // A thing's names may have several words ("sleeping bag"); the rest is words.
            let parts: Vec<&str> = if sort == Sort::Thing {
                english.split(',').map(str::trim).collect()
            } else {
                english.split_whitespace().collect()
            };
            for w in parts.into_iter().filter(|w| !w.is_empty()) {
                if !list.iter().any(|x| x == w) {
                    list.push(w.to_string());
                }
            }
        }
        found
    }
}

impl Glossary {
    /// Whether `text` says one of `phrases`: whole words (accents aside) where words have
    /// spaces, so "hay" is not found in "haya"; as a substring in Chinese.
    pub fn mentions(&self, text: &str, phrases: &[String]) -> bool {
        if !self.by_words {
            let text = text.to_lowercase();
            return phrases.iter().any(|p| text.contains(&p.to_lowercase()));
        }
        let text = words(text);
        phrases.iter().any(|p| {
            let p = words(p);
            !p.is_empty() && text.windows(p.len()).any(|w| w == p.as_slice())
        })
    }
}

/// Whether the word `t` is `k` or its plural: +s, +es, and z → ces ("altavoz", "altavoces").
fn plural_of(t: &str, k: &str) -> bool {
    t == k
        || t.strip_prefix(k)
            .is_some_and(|rest| rest == "s" || rest == "es")
        || k.strip_suffix('z')
            .is_some_and(|stem| t.strip_prefix(stem) == Some("ces"))
}

/// Lowercased words with Spanish accents taken off ("Sábanas" → "sabanas"); ñ is a letter of its
/// own and stays.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            w.chars()
                .map(|c| match c {
                    'á' => 'a',
                    'é' => 'e',
                    'í' => 'i',
                    'ó' => 'o',
                    'ú' | 'ü' => 'u',
                    c => c,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glossary(lang: Lang, things: &[(&str, &str)], qualifiers: &[(&str, &str)]) -> Glossary {
        let map = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        Glossary::new(lang, &map(things), &map(qualifiers), &BTreeMap::new())
    }

    #[test]
    fn spanish_words_match_whole_in_plural_and_without_accents() {
        let g = glossary(
            Lang::Es,
            &[
                ("mochila", "backpack, daypack"),
                ("bota", "boots"),
                ("saco de dormir", "sleeping bag"),
                ("calcetín", "socks"),
            ],
            &[("invierno", "winter")],
        );
        let f = g.find("¿Venden Mochilas y SACOS DE DORMIR para el invierno?");
        assert_eq!(f.things, ["backpack", "daypack", "sleeping bag"]);
        assert!(f.names_thing("Emberline 20°F Down Sleeping Bag"));
        assert!(f.names_thing("Wayfarer 28L Daypack") && f.names_thing("Backpacks"));
        assert!(!f.names_thing("Loft Insulated Sleeping Pad"));
        assert_eq!(f.qualifiers, ["winter"]);
        assert_eq!(f.query(), "backpack daypack sleeping bag winter");
        // "botella" is not a boot, and a part of a word is no word.
        assert_eq!(g.find("una botella"), Found::default());
        assert_eq!(g.find("calcetines de lana").things, ["socks"]);
        assert_eq!(g.find("¿tenéis calcetines?").things, ["socks"]);
        assert!(plural_of("altavoces", "altavoz") && plural_of("luces", "luz"));
        assert!(!plural_of("altavo", "altavoz"));
        let asks = ["hay".to_string(), "tenéis".to_string()];
        assert!(g.mentions("¿Hay mochilas?", &asks) && g.mentions("¿Teneis mochilas?", &asks));
        assert!(!g.mentions("Cuando haya stock", &asks));
    }

    #[test]
    fn the_longest_entry_wins_and_its_words_are_not_matched_again() {
        let es = glossary(
            Lang::Es,
            &[
                ("linterna", "lantern"),
                ("linterna frontal", "headlamp"),
                ("portátil", "laptop"),
                ("cargador portátil", "power bank"),
            ],
            &[],
        );
        assert_eq!(es.find("una linterna frontal").things, ["headlamp"]);
        assert_eq!(es.find("un cargador portatil").things, ["power bank"]);
        let zh = glossary(
            Lang::Zh,
            &[
                ("笔记本", "notebook"),
                ("笔记本电脑", "laptop"),
                ("鞋", "shoes"),
                ("跑鞋", "running shoes"),
            ],
            &[("家庭", "family")],
        );
        assert_eq!(zh.find("你们卖笔记本电脑吗？").things, ["laptop"]);
        assert_eq!(zh.find("这款跑鞋多少钱").things, ["running shoes"]);
        assert_eq!(zh.find("适合家庭的鞋").qualifiers, ["family"]);
        assert!(zh.find("退款多久到账？").things.is_empty());
    }
}
