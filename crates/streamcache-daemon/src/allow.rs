//! The allow-list: which commands the daemon agrees to run, and which binary runs.
//!
//! A rule is `PROGRAM` (any arguments) or `PROGRAM:SUBCOMMAND`: the program's first
//! argument must be `SUBCOMMAND`, after any `--shallow-file VALUE` pairs, which is the
//! one global option git's `uploadpack.packObjectsHook` puts before `pack-objects`
//! (`git --shallow-file "" pack-objects …` for shallow requests).
//!
//! **The binary is the daemon's choice, never the client's.** `PROGRAM` is a bare name
//! or an absolute path. A bare name (`git`) is looked up once, at start, on the
//! daemon's own `PATH`, and allows only the bare word `git` from a client. An absolute
//! path (`/usr/bin/git`) allows that path and its file name (`git`, as the hook
//! passes it). Either way the daemon runs the binary it resolved: a client's `PATH`
//! (say `.:/usr/bin`, or a directory of its own first) still reaches the command's
//! environment, where git needs it for its helpers, but it never picks the binary. A
//! relative path (`./tool`) is refused, since it would be resolved in the client's
//! working directory.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The default allow-list: git's pack-objects, in the form the hook passes it.
pub(crate) const DEFAULT_RULES: &[&str] = &["git:pack-objects"];

/// One `PROGRAM[:SUBCOMMAND]` rule and the binary it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    program: String,
    subcommand: Option<String>,
    binary: PathBuf,
}

impl Rule {
    /// Parses `PROGRAM` or `PROGRAM:SUBCOMMAND` and resolves its binary: an absolute
    /// path is taken as it is, a bare name is looked up in `search` (the daemon's
    /// `PATH`). The `:` is looked for after the last `/`, so a path may contain colons
    /// in its directories.
    pub(crate) fn parse(text: &str, search: Option<&OsStr>) -> Result<Rule, String> {
        let name_start = text.rfind('/').map_or(0, |i| i + 1);
        let (program, subcommand) = match text[name_start..].find(':') {
            Some(i) => {
                let (p, s) = text.split_at(name_start + i);
                (p, Some(&s[1..]))
            }
            None => (text, None),
        };
        if program.is_empty() {
            return Err(format!("allow rule {text:?}: empty program"));
        }
        if subcommand.is_some_and(str::is_empty) {
            return Err(format!("allow rule {text:?}: empty subcommand after ':'"));
        }
        let binary = if program.starts_with('/') {
            PathBuf::from(program)
        } else if program.contains('/') {
            return Err(format!(
                "allow rule {text:?}: {program:?} is a relative path; name a program by \
                 absolute path, or by bare name to find it on the daemon's PATH"
            ));
        } else {
            find_on_path(program, search).ok_or_else(|| {
                format!(
                    "allow rule {text:?}: no executable {program:?} on the daemon's PATH \
                     ({}); name it by absolute path",
                    search.map_or_else(|| "unset".into(), OsStr::to_string_lossy)
                )
            })?
        };
        Ok(Rule {
            program: program.to_owned(),
            subcommand: subcommand.map(str::to_owned),
            binary,
        })
    }

    /// Whether the client's `program` names this rule's binary: the rule's program
    /// byte for byte, or, for a rule with an absolute path, its file name.
    fn names(&self, program: &[u8]) -> bool {
        program == self.program.as_bytes()
            || (self.program.starts_with('/')
                && self.binary.file_name().map(OsStr::as_bytes) == Some(program))
    }

    fn allows(&self, program: &[u8], args: &[Vec<u8>]) -> bool {
        if !self.names(program) {
            return false;
        }
        match &self.subcommand {
            None => true,
            Some(sub) => subcommand(args) == Some(sub.as_bytes()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subcommand {
            Some(sub) => write!(f, "{}:{}", self.program, sub),
            None => f.write_str(&self.program),
        }
    }
}

/// The first executable regular file named `name` in the absolute directories of
/// `search`, as `execvp(3)` would find it. Relative entries (`.`, empty) are skipped:
/// they would depend on a working directory.
fn find_on_path(name: &str, search: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(search?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first argument after any `--shallow-file VALUE` pairs.
fn subcommand(args: &[Vec<u8>]) -> Option<&[u8]> {
    let mut rest = args;
    while let [flag, _value, tail @ ..] = rest {
        if flag.as_slice() != b"--shallow-file" {
            break;
        }
        rest = tail;
    }
    rest.first().map(Vec::as_slice)
}

/// The rules the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowList {
    rules: Vec<Rule>,
}

impl AllowList {
    /// Parses the rules, resolving bare names in `search` (the daemon's `PATH`).
    pub(crate) fn parse<S: AsRef<str>>(
        rules: &[S],
        search: Option<&OsStr>,
    ) -> Result<AllowList, String> {
        let rules = rules
            .iter()
            .map(|r| Rule::parse(r.as_ref(), search))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { rules })
    }

    #[cfg(test)]
    pub(crate) fn default_rules() -> AllowList {
        AllowList::parse(DEFAULT_RULES, Some(OsStr::new("/usr/bin:/bin")))
            .expect("the default rules parse where git is installed")
    }

    /// The binary to run if some rule allows the command, else the reason for the
    /// refusal. The first rule that allows it decides.
    pub(crate) fn check(&self, program: &[u8], args: &[Vec<u8>]) -> Result<&Path, String> {
        if let Some(rule) = self.rules.iter().find(|r| r.allows(program, args)) {
            return Ok(&rule.binary);
        }
        let shown: Vec<String> = self.rules.iter().map(Rule::to_string).collect();
        let sub = subcommand(args).map(String::from_utf8_lossy);
        Err(format!(
            "not on the allow-list: program {:?}{} (allowed: {})",
            String::from_utf8_lossy(program),
            sub.map(|s| format!(" with subcommand {s:?}"))
                .unwrap_or_default(),
            if shown.is_empty() {
                "nothing".to_owned()
            } else {
                shown.join(", ")
            }
        ))
    }

    /// The rules with the binaries they run, for the log: `git:pack-objects=/usr/bin/git`.
    pub(crate) fn binaries(&self) -> String {
        let shown: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{r}={}", r.binary.display()))
            .collect();
        shown.join(", ")
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.rules.iter().map(Rule::to_string).collect();
        f.write_str(&shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    /// Where `sh` is on every Linux system.
    fn system_path() -> Option<&'static OsStr> {
        Some(OsStr::new("/usr/bin:/bin"))
    }

    #[test]
    fn the_default_allows_pack_objects_in_both_forms_the_hook_passes() {
        let allow = AllowList::default_rules();
        allow
            .check(b"git", &args(&["pack-objects", "--revs", "--stdout"]))
            .unwrap();
        allow
            .check(
                b"git",
                &args(&["--shallow-file", "", "pack-objects", "--revs", "--stdout"]),
            )
            .unwrap();
    }

    #[test]
    fn the_default_refuses_other_subcommands_programs_and_global_options() {
        let allow = AllowList::default_rules();
        for (program, list) in [
            ("git", vec!["upload-pack", "."]),
            ("git", vec!["-c", "core.x=y", "pack-objects"]),
            ("git", vec![]),
            ("git", vec!["--shallow-file"]),
            ("/usr/bin/git", vec!["pack-objects"]),
            ("./git", vec!["pack-objects"]),
            ("sh", vec!["-c", "git pack-objects"]),
        ] {
            let err = allow.check(program.as_bytes(), &args(&list)).unwrap_err();
            assert!(err.contains("not on the allow-list"), "{err}");
            assert!(err.contains("git:pack-objects"), "{err}");
        }
    }

    #[test]
    fn a_rule_without_subcommand_allows_any_arguments() {
        let allow = AllowList::parse(&["sh"], system_path()).unwrap();
        allow.check(b"sh", &args(&["-c", "exit 3"])).unwrap();
        allow.check(b"sh", &[]).unwrap();
        assert!(allow.check(b"bash", &[]).is_err());
    }

    #[test]
    fn rules_parse_paths_with_colons_and_reject_empty_parts() {
        assert_eq!(
            Rule::parse("/opt/a:b/bin/tool:run", None).unwrap(),
            Rule {
                program: "/opt/a:b/bin/tool".into(),
                subcommand: Some("run".into()),
                binary: "/opt/a:b/bin/tool".into(),
            }
        );
        assert_eq!(Rule::parse("/opt/a:b/tool", None).unwrap().subcommand, None);
        assert!(Rule::parse(":x", system_path()).is_err());
        assert!(Rule::parse("git:", system_path()).is_err());
        assert!(Rule::parse("", system_path()).is_err());
    }

    #[test]
    fn an_empty_list_refuses_everything() {
        let allow = AllowList::parse::<&str>(&[], None).unwrap();
        let err = allow.check(b"git", &args(&["pack-objects"])).unwrap_err();
        assert!(err.contains("allowed: nothing"), "{err}");
    }

    /// A directory with an executable `tool` and a `plain` file that is not executable.
    fn bin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [("tool", 0o755), ("plain", 0o644)] {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    #[test]
    fn a_bare_name_runs_the_first_executable_on_the_daemons_path_whatever_the_client_sends() {
        let first = bin_dir();
        let second = bin_dir();
        let search = std::env::join_paths([Path::new("."), first.path(), second.path()]).unwrap();
        let allow = AllowList::parse(&["tool"], Some(&search)).unwrap();
        // `.` is skipped: it would be the client's working directory.
        assert_eq!(
            allow.check(b"tool", &[]).unwrap(),
            first.path().join("tool")
        );
        // Only the bare word names it; a client's path to some other `tool` does not.
        let elsewhere = second.path().join("tool");
        assert!(allow.check(elsewhere.as_os_str().as_bytes(), &[]).is_err());
        assert!(allow.check(b"./tool", &[]).is_err());
        // Not executable, or nowhere: the rule is refused at start, by name.
        for (rule, search) in [("plain", Some(search.as_os_str())), ("tool", None)] {
            let err = AllowList::parse(&[rule], search).unwrap_err();
            assert!(err.contains(&format!("allow rule {rule:?}")), "{err}");
            assert!(err.contains("daemon's PATH"), "{err}");
        }
    }

    #[test]
    fn an_absolute_rule_runs_its_path_for_the_path_or_the_bare_name() {
        let dir = bin_dir();
        let tool = dir.path().join("tool");
        let rule = format!("{}:run", tool.display());
        let allow = AllowList::parse(&[rule.as_str()], None).unwrap();
        for program in [tool.as_os_str().as_bytes(), b"tool"] {
            assert_eq!(allow.check(program, &args(&["run"])).unwrap(), tool);
            assert!(allow.check(program, &args(&["walk"])).is_err());
        }
        assert!(allow.check(b"./tool", &args(&["run"])).is_err());
        assert!(allow.check(b"other/tool", &args(&["run"])).is_err());
        assert!(allow
            .binaries()
            .ends_with(&format!("tool:run={}", tool.display())));
    }

    #[test]
    fn a_relative_path_is_refused_since_the_client_would_choose_what_it_names() {
        for rule in ["./where.sh", "bin/tool:run", "../git"] {
            let err = AllowList::parse(&[rule], system_path()).unwrap_err();
            assert!(err.contains("relative path"), "{err}");
        }
    }
}
