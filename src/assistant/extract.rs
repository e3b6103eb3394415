//! Exact extraction of what a message names: order ids, email addresses, a name with a postal
//! code, a postal address, a kind of payment method, yes and no. Nothing here guesses; what is
//! not written plainly is asked for.

use crate::shop::{Address, Email, OrderId, PaymentSource};

use super::prompts::Words;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    pub order_ids: Vec<OrderId>,
    pub emails: Vec<Email>,
    /// First name, last name and postal code, when all three are written.
    pub name_zip: Option<(String, String, String)>,
    pub address: Option<Address>,
    pub payment: Option<PaymentSource>,
}

impl Details {
    pub fn of(text: &str) -> Self {
        Details {
            order_ids: order_ids(text),
            emails: emails(text),
            name_zip: name_zip(text),
            address: address(text),
            payment: payment(text),
        }
    }
}

/// `#W1000001`, `W1000001` or `w1000001`: a `W` and seven digits, not inside a longer word.
pub fn order_ids(text: &str) -> Vec<OrderId> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = Vec::new();
    for i in 0..chars.len() {
        if !matches!(chars[i], 'W' | 'w') {
            continue;
        }
        let before_ok = i == 0 || !chars[i - 1].is_alphanumeric();
        let digits = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if before_ok && digits == 7 {
            let id: String = chars[i + 1..i + 8].iter().collect();
            if let Ok(o) = OrderId::parse(&format!("#W{id}")) {
                if !found.contains(&o) {
                    found.push(o);
                }
            }
        }
    }
    found
}

pub fn emails(text: &str) -> Vec<Email> {
    let mut found = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || "，,;；:：<>()（）\"'“”".contains(c))
    {
        if !word.contains('@') {
            continue;
        }
        let w = word.trim_matches(|c: char| !c.is_alphanumeric());
        if let Ok(e) = Email::parse(w) {
            if !found.contains(&e) {
                found.push(e);
            }
        }
    }
    found
}

fn zip_code(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|d| d.len() == 5)
        .map(str::to_string)
}

/// "my name is Ana Garcia … zip 12345" (also "I'm", "me llamo", "我叫").
fn name_zip(text: &str) -> Option<(String, String, String)> {
    let zip = zip_code(text)?;
    for marker in [
        "my name is ",
        "name: ",
        "i am ",
        "i'm ",
        "me llamo ",
        "mi nombre es ",
        "我叫",
        "我的名字是",
    ] {
        if let Some(end) = end_of(text, marker) {
            let rest = &text[end..];
            let words: Vec<&str> = rest
                .split(|c: char| c.is_whitespace() || c == ',' || c == '，')
                .filter(|w| !w.is_empty())
                .take(2)
                .collect();
            if words.len() == 2 && words.iter().all(|w| w.chars().all(char::is_alphabetic)) {
                return Some((words[0].to_string(), words[1].to_string(), zip));
            }
        }
    }
    None
}

/// Where the first case-insensitive occurrence of `marker` (lowercase) ends in `text`, as a byte
/// offset of `text` itself: lowercasing may change a text's length ("İ" is two bytes, its
/// lowercase three), so an offset into the lowercased text can fall inside one of its letters.
fn end_of(text: &str, marker: &str) -> Option<usize> {
    text.char_indices().find_map(|(start, _)| {
        let mut want = marker.chars().peekable();
        for (i, c) in text[start..].char_indices() {
            for l in c.to_lowercase() {
                if want.next() != Some(l) {
                    return None;
                }
            }
            if want.peek().is_none() {
                return Some(start + i + c.len_utf8());
            }
        }
        None
    })
}

fn is_state_zip(part: &str) -> Option<(String, String)> {
    let mut words = part.split_whitespace();
    let state = words.next()?;
    let zip = words.next()?;
    if words.next().is_some() {
        return None;
    }
    let state_ok = state.len() == 2 && state.chars().all(|c| c.is_ascii_alphabetic());
    let zip_ok = zip.len() == 5 && zip.chars().all(|c| c.is_ascii_digit());
    (state_ok && zip_ok).then(|| (state.to_ascii_uppercase(), zip.to_string()))
}

/// "street, [line 2,] city, ST 12345[, country]", possibly after other words ("move it to …").
fn address(text: &str) -> Option<Address> {
    let parts: Vec<&str> = text
        .split([',', '，'])
        .map(|p| p.trim().trim_end_matches(['.', '。']))
        .collect();
    let at = parts.iter().position(|p| is_state_zip(p).is_some())?;
    if at < 2 {
        return None;
    }
    let (state, zip) = is_state_zip(parts[at])?;
    let city = parts[at - 1].to_string();
    // The street starts at its house number, whatever came before it in the sentence.
    let first = parts[0];
    let street_at = first.find(|c: char| c.is_ascii_digit())?;
    let address1 = first[street_at..].trim().to_string();
    let address2 = parts[1..at - 1].join(", ");
    let country = parts
        .get(at + 1)
        .map(|c| {
            c.split_whitespace()
                .take_while(|w| !matches!(w.to_lowercase().as_str(), "please" | "thanks" | "thank"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "USA".to_string());
    if city.is_empty() || address1.len() < 3 {
        return None;
    }
    Some(Address {
        address1,
        address2,
        city,
        state,
        country,
        zip,
    })
}

fn payment(text: &str) -> Option<PaymentSource> {
    let t = text.to_lowercase();
    if [
        "gift card",
        "giftcard",
        "礼品卡",
        "tarjeta de regalo",
        "tarjeta regalo",
    ]
    .iter()
    .any(|w| t.contains(w))
    {
        Some(PaymentSource::GiftCard)
    } else if t.contains("paypal") {
        Some(PaymentSource::Paypal)
    } else if [
        "credit card",
        "card ending",
        "visa",
        "mastercard",
        "信用卡",
        "tarjeta de crédito",
        "tarjeta de credito",
    ]
    .iter()
    .any(|w| t.contains(w))
    {
        Some(PaymentSource::CreditCard)
    } else {
        None
    }
}

fn normalise(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn says(text: &str, phrases: &[String]) -> bool {
    let t = normalise(text);
    phrases.iter().any(|p| {
        let p = normalise(p);
        !p.is_empty()
            && (t == p || t.starts_with(&format!("{p} ")) || (!p.is_ascii() && t.starts_with(&p)))
    })
}

/// An explicit yes: the message is a yes word (or starts with one) and says no "no".
pub fn is_yes(text: &str, words: &[&Words]) -> bool {
    let short = normalise(text).split(' ').count() <= 6 || text.chars().count() <= 12;
    short
        && words.iter().any(|w| says(text, &w.yes))
        && !words.iter().any(|w| mentions(text, &w.no))
}

pub fn is_no(text: &str, words: &[&Words]) -> bool {
    let short = normalise(text).split(' ').count() <= 6 || text.chars().count() <= 12;
    short && words.iter().any(|w| says(text, &w.no))
}

/// Whether a lowercase phrase occurs in lowercase text: a single ASCII word only as a whole word
/// ("sue" is not in "issue"), anything else (several words, Chinese) as a substring.
pub fn has_phrase(lower: &str, phrase: &str) -> bool {
    if phrase.is_ascii() && !phrase.contains(' ') {
        lower
            .split(|c: char| !c.is_alphanumeric() && c != '\'')
            .any(|w| w == phrase)
    } else if phrase.is_ascii() {
        // Phrases of ASCII words start and end at word boundaries: "change the" is not in
        // "exchange the".
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        lower.match_indices(phrase).any(|(at, _)| {
            !word(lower[..at].chars().next_back())
                && !word(lower[at + phrase.len()..].chars().next())
        })
    } else {
        lower.contains(phrase)
    }
}

/// Whether any of `phrases` occurs in the text (case-insensitive substring).
pub fn mentions(text: &str, phrases: &[String]) -> bool {
    let t = text.to_lowercase();
    phrases.iter().any(|p| {
        let p = p.to_lowercase();
        if p.is_ascii() && p.len() <= 4 {
            // Short words only as whole words ("all" is not in "install").
            normalise(&t).split(' ').any(|w| w == p)
        } else {
            t.contains(&p)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_of_words_match_whole_words_only() {
        assert!(has_phrase("please change the size", "change the"));
        assert!(has_phrase("change the", "change the"));
        assert!(!has_phrase("i want to exchange the mug", "change the"));
        assert!(!has_phrase("change them all", "change the"));
        assert!(has_phrase("¿venden kayaks?", "¿venden"));
        assert!(has_phrase("我的订单状态", "订单状态"));
    }

    #[test]
    fn finds_ids_emails_names_and_addresses() {
        let d =
            Details::of("Cancel #W1000001 and w1000002 please, I'm at ana.garcia0@example.com.");
        assert_eq!(
            d.order_ids
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>(),
            ["#W1000001", "#W1000002"]
        );
        assert_eq!(d.emails[0].to_string(), "ana.garcia0@example.com");
        assert!(order_ids("XW10000011 and W123").is_empty());
        let a = address("Please move it to 55 Oak Ave, Apt 3, Portland, OR 97201, USA").unwrap();
        assert_eq!(
            (
                a.address1.as_str(),
                a.address2.as_str(),
                a.city.as_str(),
                a.state.as_str(),
                a.zip.as_str(),
                a.country.as_str()
            ),
            ("55 Oak Ave", "Apt 3", "Portland", "OR", "97201", "USA")
        );
        assert!(address("my zip is 97201").is_none());
        assert_eq!(
            name_zip("Hi, my name is Ana Garcia and my zip code is 10001"),
            Some(("Ana".into(), "Garcia".into(), "10001".into()))
        );
        // "İ" lowercases to three bytes from two: an offset found in the lowercased text fell
        // inside "Ñ" of the original and panicked.
        assert_eq!(
            name_zip("İ my name is Ñandú Pérez, zip 10001"),
            Some(("Ñandú".into(), "Pérez".into(), "10001".into()))
        );
        assert_eq!(
            name_zip("MY NAME IS Ana Garcia, 10001"),
            Some(("Ana".into(), "Garcia".into(), "10001".into()))
        );
        assert_eq!(end_of("İx", "i"), None);
        assert_eq!(
            payment("use my PayPal instead"),
            Some(PaymentSource::Paypal)
        );
    }

    #[test]
    fn yes_and_no_must_be_explicit() {
        let w = Words {
            yes: vec!["yes".into(), "go ahead".into()],
            no: vec!["no".into(), "don't".into()],
            ..Words::default()
        };
        let ws = [&w];
        assert!(is_yes("Yes!", &ws));
        assert!(is_yes("yes please", &ws));
        assert!(is_yes("Go ahead.", &ws));
        assert!(!is_yes("yes no", &ws));
        assert!(!is_yes("yesterday I ordered", &ws));
        assert!(!is_yes(
            "I said yes to my friend but I want to ask about shipping costs to Canada",
            &ws
        ));
        assert!(is_no("no", &ws));
        assert!(!is_no("not sure what the status is", &ws));
        assert!(mentions("return all of them", &["all".into()]));
        assert!(!mentions("how do I install it", &["all".into()]));
    }
}
