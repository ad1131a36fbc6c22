//! `volume ls` as a table: summaries of every volume, from the heads of
//! their records, parsed once per revision.
//!
//! Parsing 100k records costs about 200 ms here, most of a list. The
//! store's revisions say exactly which records changed since the last
//! list, so a cache of parsed heads, checked against them on every list,
//! is never stale: only new and changed records are read and parsed. The
//! cache is kept in key order, the order the store lists keys in, so the
//! check is one merge of two sorted lists, without hashing 100k keys.

use std::borrow::Cow;
use std::sync::Mutex;

use super::VolumeService;
use crate::error::Result;
use crate::store::{Collection, Revision};
use crate::volume::{FactsHead, RecordHead, VolumeFilter, VolumeState, VolumeSummary};

/// Past this many changed records, one list of the whole collection is
/// cheaper than reading them one by one.
const MAX_SINGLE_READS: usize = 256;

/// What the shown time of a record that cannot be read is.
const UNKNOWN_TIME: &str = "1970-01-01T00:00:00Z";

/// One record's head, parsed at `revision`; `None` if it cannot be read.
pub(super) struct CachedHead {
    key: String,
    revision: Revision,
    head: Option<RecordHead>,
}

/// The heads of every volume record, in key order.
pub(super) type HeadCache = Mutex<Vec<CachedHead>>;

impl VolumeService {
    /// Calls `f` with [`Self::list`] as a table shows it: the same volumes,
    /// in the same order, each read only as far as its summary needs, and
    /// borrowed from the cache (which `f` holds while it runs).
    pub fn with_summaries<T>(
        &self,
        filter: &VolumeFilter,
        f: impl FnOnce(&[VolumeSummary<'_>]) -> T,
    ) -> Result<T> {
        let mounted = self.stacked_mounts(&self.mount_table()?);
        let facts = self.facts_heads()?;
        let mut cache = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_heads(&mut cache)?;
        let mut out = Vec::new();
        for c in cache.iter() {
            let Some(h) = &c.head else {
                if filter.matches_unknown() {
                    out.push(VolumeSummary {
                        name: Cow::Borrowed(&c.key),
                        driver: Cow::Borrowed(""),
                        status: VolumeState::Corrupt,
                        consumers: 0,
                        mounted: false,
                        created_at: Cow::Borrowed(UNKNOWN_TIME),
                    });
                }
                continue;
            };
            let (consumers, in_use) = h.use_here(facts.get(h.name.as_str()));
            if filter.matches_parts(&h.driver, &h.labels, in_use) {
                out.push(VolumeSummary {
                    name: Cow::Borrowed(&h.name),
                    driver: Cow::Borrowed(&h.driver),
                    status: h.state,
                    consumers,
                    mounted: mounted.contains_key(&h.id),
                    created_at: Cow::Borrowed(&h.created_at),
                })
            }
        }
        // Already in order when keys are names, as they are: a check then.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(f(&out))
    }

    /// [`Self::with_summaries`], owned.
    pub fn list_summaries(&self, filter: &VolumeFilter) -> Result<Vec<VolumeSummary<'static>>> {
        self.with_summaries(filter, |s| {
            s.iter().cloned().map(VolumeSummary::into_owned).collect()
        })
    }

    /// The heads of this node's facts, by volume name: few, as only the
    /// volumes in use here have any.
    fn facts_heads(&self) -> Result<std::collections::HashMap<String, FactsHead>> {
        Ok(
            (self.local.list(Collection::NodeVolumes)?.items.into_iter())
                .filter_map(|v| Some((v.key, FactsHead::from_json(&v.value).ok()?)))
                .collect(),
        )
    }

    /// The names of the volumes each node holds the data of.
    pub(super) fn volumes_by_home(&self) -> Result<std::collections::HashMap<String, Vec<String>>> {
        let mut cache = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_heads(&mut cache)?;
        let mut homed: std::collections::HashMap<String, Vec<String>> = Default::default();
        for h in cache.iter().filter_map(|c| c.head.as_ref()) {
            if h.state == VolumeState::Corrupt {
                continue;
            }
            let home = h.node.clone().unwrap_or_else(|| self.node_id.clone());
            homed.entry(home).or_default().push(h.name.clone());
        }
        Ok(homed)
    }

    /// The names of volumes with a size, from the heads.
    pub(super) fn sized_volume_names(&self) -> Result<std::collections::BTreeSet<String>> {
        let mut cache = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh_heads(&mut cache)?;
        Ok(cache
            .iter()
            .filter_map(|c| c.head.as_ref())
            .filter(|h| h.size_bytes.is_some())
            .map(|h| h.name.clone())
            .collect())
    }

    /// Brings `cache` to what the store holds now: heads whose revision
    /// is unchanged are kept, the others read again.
    fn refresh_heads(&self, cache: &mut Vec<CachedHead>) -> Result<()> {
        let revisions = self.store.list_revisions(Collection::Volumes)?.items;
        let mut old = std::mem::take(cache).into_iter().peekable();
        let mut stale = Vec::new();
        for (key, revision) in revisions {
            while old.next_if(|o| o.key < key).is_some() {}
            match old.next_if(|o| o.key == key && o.revision == revision) {
                Some(kept) => cache.push(kept),
                None => {
                    stale.push(cache.len());
                    cache.push(CachedHead {
                        key,
                        revision,
                        head: None,
                    });
                }
            }
        }
        let parse = |bytes: &[u8]| RecordHead::from_json(bytes).ok();
        if stale.len() > MAX_SINGLE_READS {
            *cache = self
                .store
                .list(Collection::Volumes)?
                .items
                .into_iter()
                .map(|v| CachedHead {
                    head: parse(&v.value),
                    key: v.key,
                    revision: v.revision,
                })
                .collect();
            return Ok(());
        }
        let mut deleted = Vec::new();
        for i in stale {
            let entry = &mut cache[i];
            // Read after its revision was listed: perhaps newer, never older.
            match self.store.get(Collection::Volumes, &entry.key)? {
                Some(v) => {
                    entry.revision = v.revision;
                    entry.head = parse(&v.value);
                }
                None => deleted.push(i),
            }
        }
        if !deleted.is_empty() {
            let (mut i, mut deleted) = (0, deleted.into_iter().peekable());
            cache.retain(|_| {
                let keep = deleted.next_if_eq(&i).is_none();
                i += 1;
                keep
            });
        }
        Ok(())
    }
}
