//! Chat templates as transformers renders them: the checkpoint's Jinja `chat_template`
//! (tokenizer_config.json, or chat_template.jinja beside it), or `--chat-template FILE`, through
//! minijinja with Python string methods (`.strip()`, `.items()`…), `raise_exception` and `tojson`.

use std::path::Path;

use anyhow::{Context, Result};
use minijinja::{Environment, ErrorKind, Value};

use super::error::ApiError;

/// A compiled chat template and the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn special_token(config: &serde_json::Value, name: &str) -> String {
    match &config[name] {
        serde_json::Value::String(s) => s.clone(),
        other => other["content"].as_str().unwrap_or_default().to_string(),
    }
}

impl ChatTemplate {
    /// The template for `dir`: `override_file` if given, else chat_template.jinja, else
    /// tokenizer_config.json's `chat_template` (a string, or a list whose `default` entry is used).
    /// `Ok(None)` when the checkpoint has none.
    pub fn load(dir: &Path, override_file: Option<&Path>) -> Result<Option<Self>> {
        let config: serde_json::Value = match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            Ok(text) => serde_json::from_str(&text).context("parsing tokenizer_config.json")?,
            Err(_) => serde_json::Value::Null,
        };
        let source = if let Some(file) = override_file {
            Some(std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?)
        } else if let Ok(text) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Some(text)
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let Some(source) = source else { return Ok(None) };
        Ok(Some(Self::new(source, special_token(&config, "bos_token"), special_token(&config, "eos_token"))?))
    }

    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // as transformers' renderer: trailing newline of a block tag dropped, leading spaces kept
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |message: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", source).context("compiling the chat template")?;
        Ok(ChatTemplate { env, bos_token, eos_token })
    }

    /// The prompt text for `messages` (a template error is the client's: 400).
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        for (i, m) in messages.iter().enumerate() {
            if !m.is_object() || !m["role"].is_string() {
                return Err(ApiError::bad_request(format!("messages[{i}] must be an object with a string role"))
                    .param("messages"));
            }
        }
        let template = self.env.get_template("chat").expect("added at construction");
        template
            .render(minijinja::context! {
                messages => Value::from_serialize(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.clone(),
                eos_token => self.eos_token.clone(),
                tools => tools.map(Value::from_serialize),
            })
            .map_err(|e| ApiError::bad_request(format!("the chat template failed: {e}")).param("messages"))
    }
}
