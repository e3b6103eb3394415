//! Stop strings matched across token boundaries. Text that might be the start of a stop string is
//! held back until it is known not to be one, so a stop string is never emitted, not even in part.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    done: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutcome {
    pub emit: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            done: false,
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.done {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: text.to_string(),
                stopped: false,
            };
        }
        self.pending.push_str(text);
        // The earliest complete stop wins.
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            self.done = true;
            return StopOutcome {
                emit,
                stopped: true,
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    pub fn finish(&mut self) -> String {
        if self.done {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pushes: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pushes {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn a_stop_split_across_pushes_is_never_emitted() {
        assert_eq!(
            run(&["STOP"], &["abc S", "T", "OP and more"]),
            ("abc ".into(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E").emit, "hello ");
        assert_eq!(m.push("N").emit, "");
        assert_eq!(m.push("x").emit, "ENx");
        assert_eq!(run(&["END"], &["a E", "NB"]), ("a ENB".into(), false));
    }

    #[test]
    fn overlapping_candidates_and_earliest_wins() {
        assert_eq!(run(&["abc", "ab"], &["xxa", "bc"]), ("xx".into(), true));
        assert_eq!(run(&["xxab", "b"], &["xxa", "b"]), ("".into(), true));
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn multibyte_text_is_not_split() {
        assert_eq!(
            run(&["。"], &["你好", "世界。再见"]),
            ("你好世界".into(), true)
        );
        assert_eq!(run(&["éé"], &["caf", "é", "!"]), ("café!".into(), false));
    }

    #[test]
    fn no_stops_passes_through_without_holding_back() {
        let mut m = StopMatcher::new(vec![String::new()]);
        assert_eq!(m.push("ab").emit, "ab");
        assert_eq!(m.finish(), "");
    }
}
