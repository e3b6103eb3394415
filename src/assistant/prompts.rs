//! The assistant's fixed phrases and word lists, one YAML file per language in `prompts/`,
//! built into the binary. A phrase names its blanks (`{order}`); the blanks are filled with
//! values from the shop's data, never with text the model wrote.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::glossary::Glossary;
use super::lang::Lang;
use super::AssistantError;

const FILES: [(Lang, &str); 3] = [
    (
        Lang::En,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prompts/en/assistant.yaml"
        )),
    ),
    (
        Lang::Zh,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prompts/zh/assistant.yaml"
        )),
    ),
    (
        Lang::Es,
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prompts/es/assistant.yaml"
        )),
    ),
];

#[derive(Debug, Deserialize)]
struct File {
    phrases: HashMap<String, String>,
    words: WordsFile,
}

/// `words:` holds the word lists and the glossary's two maps.
#[derive(Debug, Deserialize)]
struct WordsFile {
    #[serde(flatten)]
    lists: Words,
    #[serde(default)]
    things: BTreeMap<String, String>,
    #[serde(default)]
    qualifiers: BTreeMap<String, String>,
    #[serde(default)]
    topics: BTreeMap<String, String>,
}

/// Words that decide a flow without the classifier: yes and no to a confirmation, and so on.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Words {
    pub yes: Vec<String>,
    pub no: Vec<String>,
    pub mistake: Vec<String>,
    pub all_items: Vec<String>,
    pub thanks: Vec<String>,
    pub goodbye: Vec<String>,
    /// Words that make a question a request about the shopper's own order ("can you…",
    /// "my order"), which goes to the account flow rather than to the policy.
    pub requests: Vec<String>,
    /// Words that make a question one about a product: whether the shop sells it, its price, its
    /// stock. With a thing the glossary knows, such a question is looked up in the catalogue.
    #[serde(default)]
    pub product_asks: Vec<String>,
}

#[derive(Debug)]
pub struct Prompts {
    phrases: HashMap<Lang, HashMap<String, String>>,
    words: HashMap<Lang, Words>,
    glossaries: HashMap<Lang, Glossary>,
}

impl Prompts {
    /// The built-in files; every language must have every phrase English has.
    pub fn builtin() -> Result<Self, AssistantError> {
        let mut phrases = HashMap::new();
        let mut words = HashMap::new();
        let mut glossaries = HashMap::new();
        for (lang, text) in FILES {
            let file: File = serde_yaml::from_str(text).map_err(|e| {
                AssistantError::Prompts(format!("prompts/{lang}/assistant.yaml: {e}"))
            })?;
            let w = file.words;
            glossaries.insert(
                lang,
                Glossary::new(lang, &w.things, &w.qualifiers, &w.topics),
            );
            phrases.insert(lang, file.phrases);
            words.insert(lang, w.lists);
        }
        let en = &phrases[&Lang::En];
        for lang in Lang::ALL {
            if let Some(missing) = en.keys().find(|k| !phrases[&lang].contains_key(*k)) {
                return Err(AssistantError::Prompts(format!(
                    "prompts/{lang}/assistant.yaml lacks the phrase `{missing}`"
                )));
            }
        }
        Ok(Self {
            phrases,
            words,
            glossaries,
        })
    }

    /// The phrase `key` in `lang` with its blanks filled. A blank without a value stays as it
    /// is, so a missing value shows in tests rather than vanishing.
    pub fn say(&self, lang: Lang, key: &str, values: &[(&str, &str)]) -> String {
        let Some(template) = self
            .phrases
            .get(&lang)
            .and_then(|p| p.get(key))
            .or_else(|| self.phrases.get(&Lang::En).and_then(|p| p.get(key)))
        else {
            tracing::error!(key, "a phrase is missing from prompts/");
            return String::new();
        };
        let mut out = template.clone();
        for (name, value) in values {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    /// Whether `lang` has its own phrase `key`.
    pub fn has(&self, lang: Lang, key: &str) -> bool {
        self.phrases.get(&lang).is_some_and(|p| p.contains_key(key))
    }

    pub fn words(&self, lang: Lang) -> &Words {
        &self.words[&lang]
    }

    /// The shopper's words for products in `lang`, with the catalogue's English ones.
    pub fn glossary(&self, lang: Lang) -> &Glossary {
        &self.glossaries[&lang]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_has_every_phrase_with_the_same_blanks() {
        let p = Prompts::builtin().unwrap();
        let blanks = |s: &str| {
            let mut b: Vec<String> = s
                .split('{')
                .skip(1)
                .filter_map(|x| x.split_once('}').map(|(n, _)| n.to_string()))
                .collect();
            b.sort();
            b
        };
        for (key, en) in &p.phrases[&Lang::En] {
            for lang in [Lang::Zh, Lang::Es] {
                let other = &p.phrases[&lang][key];
                assert_eq!(blanks(en), blanks(other), "{lang} `{key}`");
            }
        }
        assert_eq!(
            p.say(Lang::Es, "order_not_found", &[("order", "#W1")]),
            "No encuentro el pedido #W1 en tu cuenta."
        );
        assert!(!p.words(Lang::Zh).yes.is_empty());
        // The glossaries load from the same files; English needs none.
        assert!(p.glossary(Lang::En).is_empty());
        assert_eq!(
            p.glossary(Lang::Es).find("¿Venden sacos de dormir?").things,
            ["sleeping bag"]
        );
        assert_eq!(p.glossary(Lang::Zh).find("头灯多少钱").things, ["headlamp"]);
        assert!(!p.words(Lang::Es).product_asks.is_empty());
    }

    #[test]
    fn every_shop_refusal_has_a_phrase_in_every_language() {
        let p = Prompts::builtin().unwrap();
        for key in crate::shop::error::REFUSAL_PHRASES {
            for lang in [Lang::En, Lang::Zh, Lang::Es] {
                assert!(
                    p.has(lang, &format!("refusal_{key}")),
                    "{lang} lacks refusal_{key}"
                );
            }
        }
    }
}
