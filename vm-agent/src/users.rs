//! `/etc/passwd` and `/etc/group` parsed directly. The binary is linked statically, so glibc's
//! NSS (`getpwnam`, `initgroups`) must not be used: it would try to dlopen modules at run time.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user `{name}` not found in {path}")]
    NoUser { name: String, path: PathBuf },
    #[error("group `{name}` not found in {path}")]
    NoGroup { name: String, path: PathBuf },
}

/// One user, with the supplementary groups `initgroups` would have given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
    pub groups: Vec<u32>,
}

fn read(path: &Path) -> Result<String, UserError> {
    std::fs::read_to_string(path).map_err(|source| UserError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Look a user up by name, with its supplementary groups from the group file.
pub fn lookup_user(passwd: &Path, group: &Path, name: &str) -> Result<UserInfo, UserError> {
    let text = read(passwd)?;
    let mut user = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 7
            && f[0] == name
            && let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse())
        {
            user = Some(UserInfo {
                name: name.to_string(),
                uid,
                gid,
                home: PathBuf::from(f[5]),
                shell: f[6].to_string(),
                groups: vec![],
            });
            break;
        }
    }
    let mut user = user.ok_or_else(|| UserError::NoUser {
        name: name.into(),
        path: passwd.to_path_buf(),
    })?;
    let mut groups = vec![user.gid];
    // A missing group file only loses supplementary groups.
    if let Ok(text) = std::fs::read_to_string(group) {
        for line in text.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m.trim() == name)
                && let Ok(gid) = f[2].parse::<u32>()
                && !groups.contains(&gid)
            {
                groups.push(gid);
            }
        }
    }
    user.groups = groups;
    Ok(user)
}

/// Look a user up by uid (name only, for messages).
pub fn user_name(passwd: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

/// A group's gid by name.
pub fn lookup_group(group: &Path, name: &str) -> Result<u32, UserError> {
    let text = read(group)?;
    text.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .ok_or_else(|| UserError::NoGroup {
            name: name.into(),
            path: group.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("passwd");
        let g = dir.path().join("group");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbuilder:x:1001:1001:,,,:/home/builder:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(
            &g,
            "builder:x:1001:\ndocker:x:998:alice,builder\nsudo:x:27:alice\n",
        )
        .expect("write");
        let u = lookup_user(&p, &g, "builder").expect("builder");
        assert_eq!((u.uid, u.gid), (1001, 1001));
        assert_eq!(u.home, PathBuf::from("/home/builder"));
        assert_eq!(u.groups, vec![1001, 998]);
        assert!(matches!(
            lookup_user(&p, &g, "nobody"),
            Err(UserError::NoUser { .. })
        ));
        assert_eq!(lookup_group(&g, "docker").expect("docker"), 998);
        assert_eq!(user_name(&p, 1001).as_deref(), Some("builder"));
    }
}
