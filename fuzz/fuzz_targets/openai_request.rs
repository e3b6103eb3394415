//! Request bodies as a client could send them: every validation step after JSON parsing, the tool
//! grammar built from the client's tools, and the tool-call parsers on arbitrary model text.
#![no_main]

use clerk::server::openai::tools::{parse_calls, written_history, StreamParser, ToolSet};
use clerk::server::openai::types::{ChatCompletionRequest, CompletionRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatCompletionRequest>(data) {
        let logprobs = req.logprobs().ok().flatten();
        let _ = req.sampling.plan(logprobs, 8);
        if let Some(f) = &req.response_format {
            let _ = f.schema();
        }
        let messages = req.engine_messages();
        if let Ok(Some(tools)) = ToolSet::parse(
            req.tools.as_deref(),
            req.tool_choice.as_ref(),
            req.parallel_tool_calls,
        ) {
            let _ = tools.grammar(None);
            if let Ok(m) = messages {
                let _ = tools.prepare(m);
            }
        } else if let Ok(m) = messages {
            let _ = written_history(m);
        }
    }
    if let Ok(req) = serde_json::from_slice::<CompletionRequest>(data) {
        let _ = req.sampling.plan(None, 8);
    }
    // What a model writes, fed whole and in arbitrary pieces: whatever the stream parser passes
    // on as text plus its calls must account for everything, and it must agree with the whole
    // parser on whether the reply is calls.
    if let Ok(text) = std::str::from_utf8(data) {
        let names = vec!["lookup".to_string(), "f".to_string()];
        let whole = parse_calls(text, &names);
        let mut p = StreamParser::new(names);
        let mut calls = 0;
        let mut texts = String::new();
        let mut rest = text;
        let mut step = 1 + data.first().copied().unwrap_or(0) as usize % 7;
        while !rest.is_empty() {
            let mut cut = step.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            for piece in p.push(&rest[..cut]) {
                match piece {
                    clerk::server::openai::tools::Piece::Text(t) => texts.push_str(&t),
                    clerk::server::openai::tools::Piece::Call(_) => calls += 1,
                }
            }
            rest = &rest[cut..];
            step = step % 5 + 1;
        }
        texts.push_str(&p.finish().unwrap_or_default());
        if let Some(c) = whole {
            assert_eq!(c.len(), calls, "{text:?}");
            assert!(texts.trim().is_empty(), "{text:?} -> {texts:?}");
        }
        if calls == 0 && !text.trim().is_empty() {
            assert_eq!(texts, text, "text was lost");
        }
    }
});
