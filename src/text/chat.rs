//! Chat templates: the Jinja template shipped with a model, rendered as transformers'
//! `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`, loop controls, Python string
//! methods, `raise_exception`).

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::tokenizer::TextTokenizer;
use crate::error::{Error, Location, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Instructions a chat template may execute per rendering.
const TEMPLATE_FUEL: u64 = 2_000_000;

/// Render `messages` with the tokenizer's chat template.
pub fn render(
    tokenizer: &TextTokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<String> {
    let template = tokenizer.chat_template.as_deref().ok_or_else(|| {
        Error::input(
            Location::file("tokenizer_config.json").field("chat_template"),
            "this model has no chat template, so conversational rows and chat prompts \
                 cannot be rendered",
        )
    })?;
    let mut env = Environment::new();
    // A template comes with the model, so it may be hostile: bound the work it may do (a real
    // template renders a chat in a few thousand instructions).
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_template("chat", template).map_err(|e| {
        Error::input(
            Location::file("tokenizer_config.json").field("chat_template"),
            format!("the chat template does not parse: {e}"),
        )
    })?;
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => tokenizer.bos_token.clone().unwrap_or_default(),
                eos_token => tokenizer.eos_token.clone(),
            })
        })
        .map_err(|e| {
            Error::input(
                Location::file("tokenizer_config.json").field("chat_template"),
                format!("rendering the chat template: {e}"),
            )
        })
}

/// Token ids of a rendered chat (no extra special tokens: the template has its own).
pub fn encode(
    tokenizer: &TextTokenizer,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<Vec<u32>> {
    tokenizer.encode_with(&render(tokenizer, messages, add_generation_prompt)?, false)
}
