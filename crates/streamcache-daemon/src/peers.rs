//! Who may use the daemon: its own user and root always, and the users and groups of
//! `allow_users` / `allow_groups`, so that one daemon and one cache serve the users a
//! host runs `upload-pack` as (`www-data` for smart HTTP, `git` for ssh).
//!
//! The check is the peer's credentials (`SO_PEERCRED`), as before; the socket's mode
//! only decides who can connect to be checked. With one group named, the socket is
//! `0660` and belongs to that group: others cannot even connect. With users named (or
//! several groups), the socket is `0666`, so that each of them can connect, and the
//! credentials check turns everyone else away (counted in `peer_refused_total`, and
//! their clients run the command themselves). Entries stay owner-only files of the
//! daemon's user whoever is served.
//!
//! A group allows its members as the system's user and group databases list them
//! (`getgrouplist(3)` of the peer's user), primary group included.

use std::ffi::CString;
use std::fmt;

use anyhow::{bail, Context};
use nix::unistd::{Gid, Group, Uid, User};

/// The users and groups allowed besides the daemon's own user and root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Peers {
    users: Vec<(u32, String)>,
    groups: Vec<(u32, String)>,
}

/// Who must be able to connect to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The daemon's user (and root): mode 0600.
    Owner,
    /// The members of this group: mode 0660, the socket's group set to it.
    Group(u32),
    /// Anyone may connect; the credentials check decides: mode 0666.
    Everyone,
}

impl Peers {
    /// Resolves user and group names (or numbers) now, at start.
    ///
    /// # Errors
    ///
    /// A name the system does not know, named with its key.
    pub(crate) fn resolve(users: &[String], groups: &[String]) -> anyhow::Result<Peers> {
        let mut peers = Peers::default();
        for text in users {
            let user = match text.parse::<u32>() {
                Ok(uid) => User::from_uid(Uid::from_raw(uid)),
                Err(_) => User::from_name(text),
            }
            .with_context(|| format!("allow_users: cannot look up {text:?}"))?;
            match (user, text.parse::<u32>()) {
                (Some(user), _) => peers.users.push((user.uid.as_raw(), user.name)),
                // A uid with no name may still run a process.
                (None, Ok(uid)) => peers.users.push((uid, text.clone())),
                (None, Err(_)) => bail!("allow_users: no user named {text:?}"),
            }
        }
        for text in groups {
            let group = match text.parse::<u32>() {
                Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
                Err(_) => Group::from_name(text),
            }
            .with_context(|| format!("allow_groups: cannot look up {text:?}"))?;
            match group {
                Some(group) => peers.groups.push((group.gid.as_raw(), group.name)),
                None => bail!("allow_groups: no group named {text:?}"),
            }
        }
        Ok(peers)
    }

    /// Whether a peer of `uid` may use the daemon.
    pub(crate) fn allows(&self, uid: u32) -> bool {
        if uid == 0 || uid == rustix::process::geteuid().as_raw() {
            return true;
        }
        if self.users.iter().any(|(u, _)| *u == uid) {
            return true;
        }
        !self.groups.is_empty() && self.member_of_a_group(uid)
    }

    fn member_of_a_group(&self, uid: u32) -> bool {
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
            return false;
        };
        let Ok(name) = CString::new(user.name) else {
            return false;
        };
        match nix::unistd::getgrouplist(&name, user.gid) {
            Ok(gids) => gids.iter().any(|g| {
                self.groups
                    .iter()
                    .any(|(allowed, _)| *allowed == g.as_raw())
            }),
            Err(e) => {
                tracing::warn!(uid, error = %e, "cannot list the groups of a peer; refusing it");
                false
            }
        }
    }

    /// Who must be able to connect to the socket.
    pub(crate) fn access(&self) -> Access {
        match (self.users.as_slice(), self.groups.as_slice()) {
            ([], []) => Access::Owner,
            ([], [(gid, _)]) => Access::Group(*gid),
            _ => Access::Everyone,
        }
    }
}

/// "uid 0 (root) and uid 33 (www-data); group 1001 (git)" style, for logs and refusals.
impl fmt::Display for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let me = rustix::process::geteuid().as_raw();
        write!(f, "uid {me} and root")?;
        for (uid, name) in &self.users {
            write!(f, ", user {name} (uid {uid})")?;
        }
        for (gid, name) in &self.groups {
            write!(f, ", group {name} (gid {gid})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_unknown_names_are_errors_naming_the_key() {
        let peers = Peers::resolve(&["root".into(), "4242".into()], &["0".into()]).unwrap();
        assert_eq!(peers.users, [(0, "root".into()), (4242, "4242".into())]);
        assert_eq!(peers.groups, [(0, "root".into())]);
        let err = Peers::resolve(&["no-such-user-here".into()], &[]).unwrap_err();
        assert!(err.to_string().starts_with("allow_users: "), "{err}");
        let err = Peers::resolve(&[], &["no-such-group-here".into()]).unwrap_err();
        assert!(err.to_string().starts_with("allow_groups: "), "{err}");
    }

    #[test]
    fn the_socket_is_group_accessible_only_for_exactly_one_group() {
        let none = Peers::default();
        assert_eq!(none.access(), Access::Owner);
        let group = Peers::resolve(&[], &["0".into()]).unwrap();
        assert_eq!(group.access(), Access::Group(0));
        let user = Peers::resolve(&["4242".into()], &[]).unwrap();
        assert_eq!(user.access(), Access::Everyone);
        assert!(user.allows(4242));
        assert!(!user.allows(4243));
        assert!(none.allows(0), "root always");
    }
}
