//! Presenting a volume at its mountpoint: ownership through an idmapped
//! mount (or a recursive ownership change where the filesystem refuses
//! one), and the SELinux label.

use std::path::Path;
use std::sync::Arc;

use stowage_sys::{IdMapping, TreeStats, UserNamespace};

use super::VolumeService;
use crate::driver::{Driver, MountSpec};
use crate::error::{Error, Result};
use crate::ownership::{
    self, Label, LabelReport, Method, OwnershipReport, OwnershipSpec, Presentation,
};
use crate::volume::VolumeRecord;

const EINVAL: i32 = 22;

impl VolumeService {
    /// Mounts the driver's data on `target` and reports how it was
    /// presented.
    pub(super) fn mount_presented(
        &self,
        driver: &dyn Driver,
        record: &VolumeRecord,
        target: &Path,
    ) -> Result<Presentation> {
        let (common, _) = ownership::split(&record.options);
        let spec = OwnershipSpec::parse(&common)?;
        let context = Label::parse(&common)?.map(|l| l.context(&record.id));
        let selinux = self.sys.selinux_enabled();
        let mount_context = context
            .as_deref()
            .filter(|_| selinux && driver.labels_by_mount_option());
        let plain = MountSpec {
            idmap: None,
            context: mount_context,
        };

        let mut presentation = Presentation::default();
        match spec {
            None => driver.mount(record, target, plain)?,
            Some(spec) => {
                let mapping = spec.mapping(driver.root_owner(record)?)?;
                let refused = match spec.method {
                    Method::Chown => Some("ownership=chown was asked for".to_string()),
                    Method::Auto | Method::Idmap => {
                        let userns = self.user_namespace(&mapping)?;
                        let idmapped = MountSpec {
                            idmap: Some(&userns),
                            ..plain
                        };
                        match driver.mount(record, target, idmapped) {
                            Ok(()) => None,
                            Err(e)
                                if spec.method == Method::Auto
                                    && e.raw_os_error() == Some(EINVAL) =>
                            {
                                Some(format!("the filesystem refuses idmapped mounts ({e})"))
                            }
                            Err(e) => return Err(e),
                        }
                    }
                };
                presentation.ownership = Some(match refused {
                    None => OwnershipReport {
                        method: "idmap".into(),
                        mapping: mapping.to_string(),
                        reason: "idmapped mount: owners are presented through a user \
                                 namespace and the data is unchanged"
                            .into(),
                    },
                    Some(why) => {
                        driver.mount(record, target, plain)?;
                        let done = self.chown_unless_root_matches(target, &mapping);
                        let stats = done.inspect_err(|_| {
                            let _ = self.sys.unmount(target);
                        })?;
                        OwnershipReport {
                            method: "chown".into(),
                            mapping: mapping.to_string(),
                            reason: match stats {
                                Some(s) => format!(
                                    "{why}; changed the owner of {} of {} entries",
                                    s.changed, s.entries
                                ),
                                None => {
                                    format!("{why}; the root already matched, nothing to change")
                                }
                            },
                        }
                    }
                });
            }
        }
        if let Some(context) = &context {
            let report = self.label(target, context, selinux, mount_context.is_some());
            presentation.label = Some(report.inspect_err(|_| {
                let _ = self.sys.unmount(target);
            })?);
        }
        Ok(presentation)
    }

    /// The user namespace that presents the volume mounted at
    /// `mountpoint` to the mount group `group` (see
    /// [`ownership::group_mapping`]), or `None` when its root's group is
    /// `group` already. The root is made group-writable and setgid, so
    /// that what members create stays in the group: one change to one
    /// directory, whatever the volume holds.
    pub(super) fn group_namespace(
        &self,
        record: &VolumeRecord,
        mountpoint: &Path,
        group: u32,
    ) -> Result<Option<Arc<UserNamespace>>> {
        let (common, _) = ownership::split(&record.options);
        if OwnershipSpec::parse(&common)?.is_some() {
            return Err(Error::InvalidRequest(format!(
                "volume {} presents its own owner (owner, uidmap or gidmap); \
                 a mount group cannot be applied over it",
                record.name
            )));
        }
        let root = self
            .sys
            .inspect_nofollow(mountpoint)
            .map_err(Error::io("inspect", mountpoint))?;
        let group_writable = 0o2070;
        if root.mode & group_writable != group_writable {
            self.sys
                .set_owner_mode(mountpoint, root.uid, root.gid, root.mode | group_writable)
                .map_err(Error::io("make group-writable", mountpoint))?;
        }
        if root.gid == group {
            return Ok(None);
        }
        self.user_namespace(&ownership::group_mapping(root.gid, group))
            .map(Some)
    }

    /// The user namespace for `mapping`, made on first use.
    fn user_namespace(&self, mapping: &IdMapping) -> Result<Arc<UserNamespace>> {
        let mut cache = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = cache.get(mapping) {
            return Ok(ns.clone());
        }
        let ns = Arc::new(
            self.sys
                .user_namespace(mapping)
                .map_err(Error::io("create user namespace for", "/proc/self/ns/user"))?,
        );
        cache.insert(mapping.clone(), ns.clone());
        Ok(ns)
    }

    /// The fallback: changes owners under `target` through `mapping`,
    /// skipped when the root is already as mapped (Kubernetes'
    /// OnRootMismatch), so that remounting costs nothing.
    fn chown_unless_root_matches(
        &self,
        target: &Path,
        mapping: &IdMapping,
    ) -> Result<Option<TreeStats>> {
        let root = self
            .sys
            .inspect_nofollow(target)
            .map_err(Error::io("inspect", target))?;
        let mapped = (
            mapping.uid_to_container(root.uid).unwrap_or(root.uid),
            mapping.gid_to_container(root.gid).unwrap_or(root.gid),
        );
        if mapped == (root.uid, root.gid) {
            return Ok(None);
        }
        self.sys
            .chown_tree(target, mapping, stowage_sys::parallelism())
            .map(Some)
            .map_err(Error::io("change owners under", target))
    }

    fn label(
        &self,
        target: &Path,
        context: &str,
        selinux: bool,
        by_mount_option: bool,
    ) -> Result<LabelReport> {
        let (applied, reason) = if !selinux {
            (
                false,
                "SELinux is not enabled on this host (no /sys/fs/selinux): the label is \
                 recorded, not applied"
                    .to_string(),
            )
        } else if by_mount_option {
            (true, "context= mount option".to_string())
        } else {
            let stats = self
                .sys
                .relabel_tree(target, context, stowage_sys::parallelism())
                .map_err(Error::io("relabel", target))?;
            (
                true,
                format!(
                    "relabelled {} of {} entries (security.selinux); a bind mount takes no context= option",
                    stats.changed, stats.entries
                ),
            )
        };
        Ok(LabelReport {
            context: context.to_string(),
            applied,
            reason,
        })
    }
}
