//! Layered, typed configuration: defaults → TOML file (`CONFIG_FILE`) → environment
//! variables. Secrets are never logged: configs implement `Debug` by hand.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Load `T`: its `Default`, overlaid by the TOML file named in `CONFIG_FILE` (if set),
/// overlaid by environment variables whose upper-case names are `T`'s field names
/// (e.g. `DATABASE_URL` → `database_url`). Only the listed `fields` are read from the
/// environment.
pub fn load<T>(fields: &[&str]) -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Ok(file) = std::env::var("CONFIG_FILE") {
        if !std::path::Path::new(&file).exists() {
            anyhow::bail!("CONFIG_FILE {file} does not exist");
        }
        fig = fig.merge(Toml::file(file));
    }
    let fields: Vec<String> = fields.iter().map(|f| f.to_lowercase()).collect();
    fig = fig.merge(
        Env::raw()
            .filter(move |k| {
                fields
                    .iter()
                    .any(|f| f.as_str() == k.as_str().to_lowercase())
            })
            .lowercase(true),
    );
    Ok(fig.extract()?)
}

/// Hide a secret in `Debug` output.
pub fn redact(s: &str) -> &'static str {
    if s.is_empty() {
        "<unset>"
    } else {
        "<redacted>"
    }
}
