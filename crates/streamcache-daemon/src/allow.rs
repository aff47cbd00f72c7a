//! The allow-list: which commands the daemon agrees to run.
//!
//! A rule is `PROGRAM` (any arguments) or `PROGRAM:SUBCOMMAND`: the program's first
//! argument must be `SUBCOMMAND`, after any `--shallow-file VALUE` pairs, which is the
//! one global option git's `uploadpack.packObjectsHook` puts before `pack-objects`
//! (`git --shallow-file "" pack-objects …` for shallow requests). `PROGRAM` is compared
//! with the command's program as given, byte for byte: `git` allows the bare word `git`
//! (looked up in the client's `PATH`, where upload-pack put its own exec-path first),
//! not `/usr/bin/git`.

use std::fmt;

/// The default allow-list: git's pack-objects, in the form the hook passes it.
pub(crate) const DEFAULT_RULES: &[&str] = &["git:pack-objects"];

/// One `PROGRAM[:SUBCOMMAND]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    program: String,
    subcommand: Option<String>,
}

impl Rule {
    /// Parses `PROGRAM` or `PROGRAM:SUBCOMMAND`. The `:` is looked for after the last
    /// `/`, so a path may contain colons in its directories.
    pub(crate) fn parse(text: &str) -> Result<Rule, String> {
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
        Ok(Rule {
            program: program.to_owned(),
            subcommand: subcommand.map(str::to_owned),
        })
    }

    fn allows(&self, program: &[u8], args: &[Vec<u8>]) -> bool {
        if self.program.as_bytes() != program {
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
    pub(crate) fn parse<S: AsRef<str>>(rules: &[S]) -> Result<AllowList, String> {
        let rules = rules
            .iter()
            .map(|r| Rule::parse(r.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { rules })
    }

    #[cfg(test)]
    pub(crate) fn default_rules() -> AllowList {
        AllowList::parse(DEFAULT_RULES).expect("the default rules parse")
    }

    /// `Ok` if some rule allows the command, else the reason for the refusal.
    pub(crate) fn check(&self, program: &[u8], args: &[Vec<u8>]) -> Result<(), String> {
        if self.rules.iter().any(|r| r.allows(program, args)) {
            return Ok(());
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
            ("sh", vec!["-c", "git pack-objects"]),
        ] {
            let err = allow.check(program.as_bytes(), &args(&list)).unwrap_err();
            assert!(err.contains("not on the allow-list"), "{err}");
            assert!(err.contains("git:pack-objects"), "{err}");
        }
    }

    #[test]
    fn a_rule_without_subcommand_allows_any_arguments() {
        let allow = AllowList::parse(&["sh"]).unwrap();
        allow.check(b"sh", &args(&["-c", "exit 3"])).unwrap();
        allow.check(b"sh", &[]).unwrap();
        assert!(allow.check(b"bash", &[]).is_err());
    }

    #[test]
    fn rules_parse_paths_with_colons_and_reject_empty_parts() {
        assert_eq!(
            Rule::parse("/opt/a:b/bin/tool:run").unwrap(),
            Rule {
                program: "/opt/a:b/bin/tool".into(),
                subcommand: Some("run".into())
            }
        );
        assert_eq!(Rule::parse("/opt/a:b/tool").unwrap().subcommand, None);
        assert!(Rule::parse(":x").is_err());
        assert!(Rule::parse("git:").is_err());
        assert!(Rule::parse("").is_err());
    }

    #[test]
    fn an_empty_list_refuses_everything() {
        let allow = AllowList::parse::<&str>(&[]).unwrap();
        let err = allow.check(b"git", &args(&["pack-objects"])).unwrap_err();
        assert!(err.contains("allowed: nothing"), "{err}");
    }
}
