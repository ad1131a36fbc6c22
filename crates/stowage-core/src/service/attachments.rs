//! Attachments: which nodes a volume is made available to (CSI's
//! ControllerPublish), and the access-mode rule that an exclusive volume
//! is attached to one node at a time.

use super::{logged, VolumeService};
use crate::error::{Error, Result};
use crate::name::VolumeName;
use crate::volume::Attachment;

impl VolumeService {
    /// The node this service runs on.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Attaches the volume to `node`. Attaching again the same way
    /// succeeds; the same node with other access is a conflict, and an
    /// exclusive attachment excludes every other node.
    pub fn attach(&self, name: &str, node: &str, how: Attachment) -> Result<()> {
        logged("attach", name, || self.attach_inner(name, node, how))
    }

    fn attach_inner(&self, name: &str, node: &str, how: Attachment) -> Result<()> {
        let name = VolumeName::parse(name)?;
        let _guard = self.locks.lock(name.as_str());
        let mut loaded = self.load_ready(&name)?;
        // Nodes are this host for now; a shared store will list its peers.
        if node != self.node_id {
            return Err(Error::UnknownNode {
                node: node.to_string(),
            });
        }
        loaded.record.refuse_away_from_home(node)?;
        let attachments = &loaded.record.attachments;
        match attachments.get(node) {
            Some(existing) if *existing == how => return Ok(()),
            Some(_) => {
                return Err(Error::AttachmentConflict {
                    name: name.to_string(),
                    node: node.to_string(),
                })
            }
            None => {}
        }
        let others: Vec<String> = attachments
            .iter()
            .filter(|(n, a)| *n != node && (how.exclusive || a.exclusive))
            .map(|(n, _)| n.clone())
            .collect();
        if !others.is_empty() {
            return Err(Error::AttachedElsewhere {
                name: name.to_string(),
                nodes: others,
            });
        }
        loaded.record.attachments.insert(node.to_string(), how);
        self.save(&mut loaded)
    }

    /// Detaches the volume from `node`, or from every node; detaching
    /// what is not attached succeeds.
    pub fn detach(&self, name: &str, node: Option<&str>) -> Result<()> {
        logged("detach", name, || {
            let name = VolumeName::parse(name)?;
            let _guard = self.locks.lock(name.as_str());
            let mut loaded = self.load_ready(&name)?;
            let before = loaded.record.attachments.len();
            loaded
                .record
                .attachments
                .retain(|n, _| node.is_some_and(|node| node != n));
            if loaded.record.attachments.len() == before {
                return Ok(());
            }
            self.save(&mut loaded)
        })
    }
}
