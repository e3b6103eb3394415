//! Which language a shopper writes in. Script decides Chinese; between English and Spanish,
//! Spanish letters and common function words do. Short or unclear messages ("ok", an email
//! address) return `None`, so the conversation keeps the language it had.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
    Es,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::En, Lang::Zh, Lang::Es];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
            Lang::Es => "es",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        let code = code.trim().to_ascii_lowercase();
        Lang::ALL
            .into_iter()
            .find(|l| code == l.code() || code.starts_with(&format!("{}-", l.code())))
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x3000..=0x303F | 0xFF00..=0xFFEF)
}

const SPANISH: &[&str] = &[
    "el",
    "la",
    "los",
    "las",
    "un",
    "una",
    "de",
    "del",
    "que",
    "en",
    "y",
    "es",
    "mi",
    "por",
    "para",
    "con",
    "quiero",
    "puedo",
    "pedido",
    "hola",
    "gracias",
    "cómo",
    "como",
    "dónde",
    "donde",
    "cuándo",
    "cuando",
    "qué",
    "está",
    "esta",
    "tiene",
    "tienen",
    "hacen",
    "envío",
    "envíos",
    "devolución",
    "devolver",
    "cambiar",
    "sí",
    "mis",
    "tu",
    "su",
    "me",
    "se",
    "lo",
    "al",
    "pero",
    "muy",
    "ayuda",
    "favor",
    "necesito",
    "cancelar",
    "hablar",
    "persona",
    "buenos",
    "buenas",
    "días",
    "tengo",
    "compra",
    "producto",
    "reembolso",
    "talla",
    "cuánto",
    "cuesta",
];

const ENGLISH: &[&str] = &[
    "the", "a", "an", "of", "to", "and", "is", "my", "for", "with", "i", "you", "it", "do", "does",
    "can", "what", "where", "when", "how", "order", "want", "please", "hello", "hi", "thanks",
    "thank", "your", "this", "that", "in", "on", "are", "was", "have", "has", "me", "would",
    "like", "need", "help", "cancel", "return", "yes", "not", "ship", "shipping", "much", "long",
    "be", "will", "any", "there", "talk", "person", "hey",
];

/// The language of `text`, when it is clear.
pub fn detect(text: &str) -> Option<Lang> {
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    if letters == 0 {
        return None;
    }
    let han = text.chars().filter(|&c| is_han(c)).count();
    if han >= 2 || han * 3 >= letters {
        return Some(Lang::Zh);
    }
    let lower = text.to_lowercase();
    let mut es = 0.0f32;
    let mut en = 0.0f32;
    if lower.contains(['ñ', '¿', '¡', 'á', 'é', 'í', 'ó', 'ú']) {
        es += 1.5;
    }
    for word in lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && !"áéíóúñü".contains(c))
        .filter(|w| !w.is_empty())
    {
        // An email address or an order id says nothing about the language.
        if word.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        if SPANISH.contains(&word) {
            es += 1.0;
        }
        if ENGLISH.contains(&word) {
            en += 1.0;
        }
    }
    if es == 0.0 && en == 0.0 {
        return None;
    }
    if es > en {
        Some(Lang::Es)
    } else if en > es {
        Some(Lang::En)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_three_languages_and_abstains_on_noise() {
        assert_eq!(detect("Where is my order?"), Some(Lang::En));
        assert_eq!(detect("¿Dónde está mi pedido?"), Some(Lang::Es));
        assert_eq!(detect("quiero cancelar el pedido"), Some(Lang::Es));
        assert_eq!(detect("我的订单在哪里？"), Some(Lang::Zh));
        assert_eq!(detect("订单 #W1000005"), Some(Lang::Zh));
        assert_eq!(detect("ana.garcia0@example.com"), None);
        assert_eq!(detect("#W1000001"), None);
        assert_eq!(detect("ok"), None);
        assert_eq!(Lang::parse("zh-CN"), Some(Lang::Zh));
        assert_eq!(Lang::parse("fr"), None);
    }
}
