//! Configuration: [`Config`] is what a [`Cache`](crate::Cache) runs with; [`Settings`] is
//! the form an operator writes (a TOML table), resolved into a `Config` with defaults
//! and checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};

/// The default maximum age of an entry.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// How a [`Cache`](crate::Cache) behaves.
///
/// ```
/// use std::time::Duration;
/// let mut cfg = streamcache::Config::new("/var/cache/streamcache");
/// cfg.max_age = Duration::from_secs(60);
/// cfg.validate()?;
/// # Ok::<(), streamcache::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The directory entry files live in. Must be absolute; created on first use.
    ///
    /// The directory must belong to the cache alone: maintenance removes **every** file
    /// under it older than `max_age`, whoever made it (that is how files of crashed
    /// processes are reclaimed). Several caches and processes may share it if they use
    /// the same `max_age`.
    pub dir: PathBuf,
    /// How long an entry is served after it was created (not after it was last used).
    /// Also the rotation period of the min-occurrences counters. Zero evicts every entry
    /// at the next maintenance run.
    pub max_age: Duration,
    /// Hold producers back so they run at most one write ahead of their fastest reader
    /// (`true`, the default), or let them write at full speed (`false`). Either way a
    /// producer whose readers have all gone is stopped.
    pub backpressure: bool,
    /// A key is cached only once it has been asked for more than this many times; the
    /// first occurrences run their producer outside the cache. 0 caches every key.
    pub min_occurrences: u32,
}

impl Config {
    /// A configuration for `dir` with the defaults: 5 minutes, back pressure on,
    /// min-occurrences 1.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            max_age: DEFAULT_MAX_AGE,
            backpressure: true,
            min_occurrences: 1,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field if `dir` is empty or relative.
    pub fn validate(&self) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::config("dir", "must not be empty"));
        }
        if !self.dir.is_absolute() {
            return Err(Error::config(
                "dir",
                format!("must be an absolute path, got {:?}", self.dir),
            ));
        }
        Ok(())
    }
}

/// The operator's form of the configuration, as in a `[cache]` TOML table.
///
/// With the `serde` feature it deserializes with defaults for missing keys, and rejects
/// unknown keys:
///
/// ```toml
/// enabled = true
/// dir = "/var/cache/streamcache"   # default: <first storage>/+streamcache
/// max_age = "5m"                   # default 5m; "0s" also means 5m
/// min_occurrences = 1
/// backpressure = true
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct Settings {
    /// Turn the cache on. A disabled cache runs every producer and stores nothing.
    pub enabled: bool,
    /// The cache directory.
    pub dir: Option<PathBuf>,
    /// Maximum age as a duration string such as `"5m"` or `"1h30m"`.
    pub max_age: Option<String>,
    /// See [`Config::min_occurrences`]. Negative values mean 0.
    pub min_occurrences: i64,
    /// See [`Config::backpressure`].
    pub backpressure: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            enabled: false,
            dir: None,
            max_age: None,
            min_occurrences: 1,
            backpressure: true,
        }
    }
}

impl Settings {
    /// Applies defaults and checks the settings against the directories the cache must
    /// never be the same as or a parent of (`storages`: the repositories the daemon
    /// serves, for example). The default directory is `<first storage>/+streamcache`.
    /// Returns `None` when the cache is disabled; a disabled cache is not checked.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the field, checked in this order: a negative or
    /// unreadable `max_age`; no `dir` and no storage to derive one from; a relative
    /// `dir`; a `dir` that is a storage or one of its parents.
    pub fn resolve(&self, storages: &[PathBuf]) -> Result<Option<Config>> {
        if !self.enabled {
            return Ok(None);
        }
        let max_age = match self.max_age.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_MAX_AGE,
            Some(text) if text.starts_with('-') => {
                return Err(Error::config(
                    "max_age",
                    format!("cannot be negative, got {text:?}"),
                ));
            }
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d.is_zero() => DEFAULT_MAX_AGE,
                Ok(d) => d,
                Err(e) => {
                    return Err(Error::config(
                        "max_age",
                        format!("{text:?} is not a duration: {e}"),
                    ));
                }
            },
        };
        let dir = match (&self.dir, storages.first()) {
            (Some(dir), _) if !dir.as_os_str().is_empty() => dir.clone(),
            (_, Some(storage)) => storage.join("+streamcache"),
            (_, None) => {
                return Err(Error::config(
                    "dir",
                    "cannot pick a default cache directory: no storages",
                ));
            }
        };
        if !dir.is_absolute() {
            return Err(Error::config(
                "dir",
                format!("must be an absolute path, got {dir:?}"),
            ));
        }
        for storage in storages {
            if is_same_or_parent(&dir, storage) {
                return Err(Error::config(
                    "dir",
                    format!(
                        "the cache directory {dir:?} cannot be the same as or a parent of the storage {storage:?}"
                    ),
                ));
            }
        }
        Ok(Some(Config {
            dir,
            max_age,
            backpressure: self.backpressure,
            min_occurrences: u32::try_from(self.min_occurrences.max(0)).unwrap_or(u32::MAX),
        }))
    }
}

/// Compares whole path components, so `/data/stor` is not a parent of `/data/storage`
/// (the reference compared strings and got that wrong).
fn is_same_or_parent(dir: &Path, storage: &Path) -> bool {
    let normal = |p: &Path| -> PathBuf { p.components().collect() };
    normal(storage).starts_with(normal(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> Settings {
        Settings {
            enabled: true,
            ..Settings::default()
        }
    }

    #[cfg(feature = "serde")]
    fn parse(text: &str) -> Settings {
        toml::from_str(text).unwrap()
    }

    // ported from internal/gitaly/config/config_test.go: TestValidatePackObjectsCache (and the TOML cases)
    #[cfg(feature = "serde")]
    #[test]
    fn empty_input_gives_defaults_and_a_disabled_cache() {
        let s = parse("");
        assert_eq!(s, Settings::default());
        assert_eq!(s.min_occurrences, 1);
        assert!(s.backpressure);
        assert_eq!(s.resolve(&["/foobar".into()]).unwrap(), None);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn enabled_with_one_storage_gets_default_dir_and_age() {
        let cfg = parse("enabled = true")
            .resolve(&["/foobar".into()])
            .unwrap()
            .unwrap();
        assert_eq!(cfg.dir, PathBuf::from("/foobar/+streamcache"));
        assert_eq!(cfg.max_age, Duration::from_secs(300));
        assert_eq!(cfg.min_occurrences, 1);
        assert!(cfg.backpressure);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn explicit_values_are_kept_exactly() {
        let s = parse(
            "enabled = true\ndir = \"/bazqux\"\nmax_age = \"10m\"\nmin_occurrences = 0\nbackpressure = false\n",
        );
        let cfg = s.resolve(&["/foobar".into()]).unwrap().unwrap();
        assert_eq!(cfg.dir, PathBuf::from("/bazqux"));
        assert_eq!(cfg.max_age, Duration::from_secs(600));
        assert_eq!(cfg.min_occurrences, 0);
        assert!(!cfg.backpressure);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = toml::from_str::<Settings>("enabld = true").unwrap_err();
        assert!(err.to_string().contains("enabld"), "{err}");
    }

    #[test]
    fn no_storages_and_no_dir_is_an_error() {
        let err = enabled().resolve(&[]).unwrap_err();
        assert!(err.to_string().contains("no storages"), "{err}");
        assert!(matches!(err, Error::Config { field: "dir", .. }));
    }

    #[test]
    fn negative_max_age_is_checked_first() {
        let s = Settings {
            max_age: Some("-5m".into()),
            ..enabled()
        };
        let err = s.resolve(&[]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "max_age",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("cannot be negative"), "{err}");
    }

    #[test]
    fn a_relative_dir_is_rejected() {
        let s = Settings {
            dir: Some("foobar".into()),
            ..enabled()
        };
        let err = s.resolve(&["/foobar".into()]).unwrap_err();
        assert!(
            err.to_string().contains("must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn a_dir_that_is_or_contains_a_storage_is_rejected() {
        let cases: [(&str, &[&str]); 3] = [
            ("/foobar", &["/foobar"]),
            ("/bazqux", &["/foobar", "/bazqux"]),
            ("/my/nested", &["/my/nested/default/storage"]),
        ];
        for (dir, storages) in cases {
            let s = Settings {
                dir: Some(dir.into()),
                ..enabled()
            };
            let storages: Vec<PathBuf> = storages.iter().map(PathBuf::from).collect();
            let err = s.resolve(&storages).unwrap_err();
            assert!(
                err.to_string().contains("same as or a parent"),
                "{dir}: {err}"
            );
        }
    }

    #[test]
    fn a_sibling_with_a_common_prefix_is_not_a_parent() {
        let s = Settings {
            dir: Some("/data/stor".into()),
            ..enabled()
        };
        assert!(s.resolve(&["/data/storage".into()]).unwrap().is_some());
    }

    #[test]
    fn a_disabled_cache_is_not_validated() {
        let s = Settings {
            max_age: Some("-1ns".into()),
            ..Settings::default()
        };
        assert_eq!(s.resolve(&[]).unwrap(), None);
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(Config::new("/abs").validate().is_ok());
        let err = Config::new("relative/path").validate().unwrap_err();
        assert!(matches!(err, Error::Config { field: "dir", .. }));
        assert!(err.to_string().contains("relative/path"), "{err}");
        let err = Config::new("").validate().unwrap_err();
        assert!(matches!(err, Error::Config { field: "dir", .. }));
    }

    #[test]
    fn an_unreadable_max_age_names_the_text() {
        let s = Settings {
            max_age: Some("soon".into()),
            dir: Some("/x".into()),
            ..enabled()
        };
        let err = s.resolve(&[]).unwrap_err();
        assert!(err.to_string().contains("\"soon\""), "{err}");
    }
}
