//! `volume ls` as a table: summaries of every volume, from the heads of
//! their records, parsed once per revision.
//!
//! Parsing 100k records costs about 200 ms here, most of a list. The
//! store's revisions say exactly which records changed since the last
//! list, so a cache of parsed heads, checked against them on every list,
//! is never stale: only new and changed records are read and parsed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use super::VolumeService;
use crate::error::Result;
use crate::store::{Collection, Revision};
use crate::volume::{RecordHead, VolumeFilter, VolumeState, VolumeSummary};

/// Past this many changed records, one list of the whole collection is
/// cheaper than reading them one by one.
const MAX_SINGLE_READS: usize = 256;

/// Parsed heads by key, with the revision they were parsed at; `None` for
/// a record that cannot be read.
pub(super) type HeadCache = Mutex<HashMap<String, (Revision, Option<Arc<RecordHead>>)>>;

impl VolumeService {
    /// [`Self::list`] as a table shows it: the same volumes, in the same
    /// order, each read only as far as its summary needs.
    pub fn list_summaries(&self, filter: &VolumeFilter) -> Result<Vec<VolumeSummary>> {
        let mounted = self.stacked_mounts(&self.mount_table()?);
        let heads = self.current_heads()?;
        let mut out = Vec::new();
        for (key, head) in heads {
            match head {
                Some(h) if filter.matches_parts(&h.driver, &h.labels, h.in_use()) => {
                    out.push(VolumeSummary {
                        name: h.name.clone(),
                        driver: h.driver.clone(),
                        status: h.state,
                        consumers: h.consumers.len(),
                        mounted: mounted.contains_key(&h.id),
                        created_at: h.created_at,
                    })
                }
                Some(_) => {}
                None if filter.matches_unknown() => out.push(VolumeSummary {
                    name: key,
                    driver: String::new(),
                    status: VolumeState::Corrupt,
                    consumers: 0,
                    mounted: false,
                    created_at: OffsetDateTime::UNIX_EPOCH,
                }),
                None => {}
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Every volume record's head as the store holds it now, by key.
    fn current_heads(&self) -> Result<Vec<(String, Option<Arc<RecordHead>>)>> {
        let revisions = self.store.list_revisions(Collection::Volumes)?;
        let mut cache = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<&str> = revisions
            .iter()
            .filter(|(k, r)| cache.get(k).is_none_or(|(cached, _)| cached != r))
            .map(|(k, _)| k.as_str())
            .collect();
        let parse = |bytes: &[u8]| RecordHead::from_json(bytes).ok().map(Arc::new);
        if stale.len() > MAX_SINGLE_READS {
            let all = self.store.list(Collection::Volumes)?;
            cache.clear();
            for v in all {
                let head = parse(&v.value);
                cache.insert(v.key, (v.revision, head));
            }
        } else {
            for key in stale {
                // Read after its revision was listed: perhaps newer, never older.
                match self.store.get(Collection::Volumes, key)? {
                    Some(v) => cache.insert(key.to_string(), (v.revision, parse(&v.value))),
                    None => cache.remove(key),
                };
            }
        }
        // What the listing saw, from the cache; keys deleted since leave it.
        let listed: std::collections::HashSet<&str> =
            revisions.iter().map(|(k, _)| k.as_str()).collect();
        cache.retain(|k, _| listed.contains(k.as_str()));
        Ok(revisions
            .iter()
            .filter_map(|(k, _)| cache.get(k).map(|(_, h)| (k.clone(), h.clone())))
            .collect())
    }
}
