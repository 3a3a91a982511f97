//! The configuration parser on arbitrary text (no environment).
//!
//! Properties:
//! - `Config::parse` never panics;
//! - an error message never repeats the value of a secret-bearing line of the input (a
//!   `url = …`, which carries the database password, or any `…password…`/`…secret…` key):
//!   messages end up in logs and terminals;
//! - an accepted configuration holds what validation promises.
#![no_main]

use std::path::Path;

use driftsync::config::{Config, NoEnv};
use libfuzzer_sys::fuzz_target;

/// Shorter values match message words by chance ("required", "expected"…).
const MIN_SECRET_LEN: usize = 8;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(Path::new("fuzz.toml"), &text, &NoEnv) {
        Ok(config) => {
            assert!((0.0..=1.0).contains(&config.reconcile.max_push_fraction));
            assert!(!config.auth0.connection.trim().is_empty());
            assert!(!config.legacy.query.trim().is_empty());
            assert!(config.auth0.request_timeout.as_secs() >= 1);
            assert!(config.cache.export_timeout.as_secs() >= 1);
            for fields in [&config.reconcile.fields, &config.reconcile.push_fields]
                .into_iter()
                .flatten()
            {
                assert!(!fields.is_empty());
                assert!(
                    fields.windows(2).all(|pair| pair[0] < pair[1]),
                    "{fields:?}"
                );
            }
        }
        Err(error) => {
            let message = error.to_string();
            for secret in secrets(&text) {
                assert!(
                    !message.contains(secret),
                    "the error repeats the secret {secret:?}: {message}"
                );
            }
        }
    }
});

/// The values of the lines that name a secret-bearing key, as written (quotes removed).
fn secrets(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once('=')?;
        let key = key.trim().trim_start_matches('[').trim_end_matches(']');
        let last = key.rsplit('.').next()?.trim().trim_matches(['"', '\'']);
        let last = last.to_ascii_lowercase();
        let secret_key = last == "url"
            || ((last.contains("password") || last.contains("secret")) && !last.ends_with("_file"));
        if !secret_key {
            return None;
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let inner = value.trim_start_matches(quote);
                inner.split(quote).next().unwrap_or(inner)
            }
            _ => value,
        };
        (value.len() >= MIN_SECRET_LEN).then_some(value)
    })
}
