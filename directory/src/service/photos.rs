//! Photos: assign (with idempotency keys), commit, condemn, lookup, read URLs and delete
//! (with the purge and needle deletes it fans out).

use super::*;

impl Directory {
    /// A new id and cookie on a writable volume: the less recently written and the emptier,
    /// the likelier (best of two random choices). Touches no backend.
    pub fn assign(&self, req: &AssignRequest) -> Result<AssignResponse, DirectoryError> {
        let view = self.view();
        let fits: Vec<&VolumeView> = view
            .writable
            .iter()
            .filter_map(|id| view.volumes.get(id))
            .filter(|v| v.free_bytes() >= req.size_hint_bytes)
            .filter(|v| !req.exclude_volumes.contains(&v.info.id))
            .collect();
        if fits.is_empty() {
            return Err(DirectoryError::NoWritableVolume(format!(
                "none of {} writable volumes has {} bytes free; more are created as stores allow",
                view.writable.len(),
                req.size_hint_bytes
            )));
        }
        let mut rng = rand::rng();
        let a = fits[rng.random_range(0..fits.len())];
        let b = fits[rng.random_range(0..fits.len())];
        let score =
            |v: &VolumeView| v.free_bytes() as f64 / (1 + v.recent.load(Ordering::Relaxed)) as f64;
        let pick = if score(b) > score(a) { b } else { a };
        let id = self.next_id()?;
        pick.recent.fetch_add(1, Ordering::Relaxed);
        self.note_assigned(req.size_hint_bytes);
        metrics::counter!("haystack_directory_assign_total").increment(1);
        Ok(AssignResponse {
            id,
            cookie: ids::new_cookie(),
            volume_id: pick.info.id,
            replicas: pick.replicas.clone(),
            replayed: false,
            request_hash: None,
            write_token: None,
        })
    }

    /// Assign, honouring `req.idempotency_key` when set: while the key is bound to a committed
    /// photo (a keyed commit bound it less than `idempotency_ttl_ms` ago), the answer is that
    /// photo's id, cookie and volume with `replayed: true`; otherwise a fresh assignment. Assign
    /// never writes under the key and never hands out an id twice: a key is bound at commit
    /// ([`Directory::commit_keyed`]), so racing requests and retried attempts each write under
    /// their own id and only one of them can become the key's photo.
    pub async fn assign_idempotent(
        &self,
        req: &AssignRequest,
    ) -> Result<AssignResponse, DirectoryError> {
        let Some(key) = req.idempotency_key.as_deref() else {
            return self.assign(req);
        };
        let hash = key_hash(key)?;
        if let Some(u) = self.meta.get_upload(hash).await? {
            if u.value.key != key {
                return Err(key_collision());
            }
            if self.key_live(&u.value) {
                match self.settle(&u.value).await? {
                    Binding::Live(p) => return Ok(self.replay(&p, &u.value)),
                    Binding::Deleted(p) => return Ok(self.replay(&p, &u.value)),
                    Binding::Free => {}
                }
            }
        }
        self.assign(req)
    }

    /// Whether a key record is still within the idempotency window.
    pub(super) fn key_live(&self, u: &UploadKey) -> bool {
        self.clock.now_ms().saturating_sub(u.created_ms) <= self.config.idempotency_ttl_ms
    }

    /// What a key record binds now. A binding whose photo record is missing (its committer
    /// died between the two writes) is completed here from the copy in the key record; one
    /// whose id garbage collection condemned meanwhile binds nothing.
    pub(super) async fn settle(&self, u: &UploadKey) -> Result<Binding, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            match self.meta.get_photo(u.id).await? {
                Some(p) if p.value.condemned => return Ok(Binding::Free),
                Some(p) if p.value.deleted => return Ok(Binding::Deleted(p.value)),
                Some(p) => return Ok(Binding::Live(p.value)),
                None => {
                    let Some(photo) = &u.photo else {
                        // An assign of an earlier version that was never committed.
                        return Ok(Binding::Free);
                    };
                    if let Cas::Applied { .. } = self.meta.put_photo(photo, Expect::Absent).await? {
                        tracing::info!(photo_id = photo.id, "commit completed from its key record");
                        metrics::counter!("haystack_directory_commit_total").increment(1);
                        return Ok(Binding::Live(photo.clone()));
                    }
                }
            }
        }
        Err(DirectoryError::Conflict(format!(
            "photo {} is contended; retry",
            u.id
        )))
    }

    pub(super) fn replay(&self, p: &Photo, u: &UploadKey) -> AssignResponse {
        let replicas = self
            .view()
            .volumes
            .get(&p.volume_id)
            .map(|v| v.replicas.clone())
            .unwrap_or_default();
        AssignResponse {
            id: p.id,
            cookie: p.cookie,
            volume_id: p.volume_id,
            replicas,
            replayed: true,
            request_hash: u.request_hash.clone(),
            write_token: None,
        }
    }

    pub(super) fn validate_commit(req: &CommitRequest) -> Result<(), DirectoryError> {
        let bad = |m: String| Err(DirectoryError::BadRequest(m));
        if req.id == 0 {
            return bad("id must not be 0".into());
        }
        match req.kind {
            PhotoKind::Photo if req.variants.is_empty() => {
                return bad("a photo needs at least one variant".into())
            }
            PhotoKind::Photo if !req.chunks.is_empty() => {
                return bad("a photo has no chunks".into())
            }
            PhotoKind::Video | PhotoKind::Object if req.chunks.is_empty() => {
                return bad("a video or an object needs at least one chunk".into())
            }
            PhotoKind::Object if !req.variants.is_empty() => {
                return bad("an object has no variants".into())
            }
            _ => {}
        }
        let mut alts = HashSet::new();
        let mut names = HashSet::new();
        for v in &req.variants {
            if v.name.is_empty() || v.content_type.is_empty() {
                return bad("every variant needs a name and a content_type".into());
            }
            if !names.insert(v.name.as_str()) {
                return bad(format!("variant name {:?} appears twice", v.name));
            }
            if !alts.insert(v.alt) {
                return bad(format!("alternate key {} appears twice", v.alt));
            }
        }
        let mut offset = 0u64;
        for c in &req.chunks {
            if !alts.insert(c.alt) {
                return bad(format!("alternate key {} appears twice", c.alt));
            }
            if c.offset != offset {
                return bad(format!(
                    "chunk {} starts at {} but the previous chunks end at {offset}",
                    c.alt, c.offset
                ));
            }
            offset = offset.saturating_add(c.size_bytes);
        }
        Ok(())
    }

    /// Records a photo whose needles are on every replica. Idempotent: committing the same
    /// photo again answers the stored one; a different photo under the same id is a conflict.
    pub async fn commit(&self, req: CommitRequest) -> Result<PhotoInfo, DirectoryError> {
        self.commit_keyed(KeyedCommit {
            commit: req,
            idempotency_key: None,
            request_hash: None,
            pending_replicas: Vec::new(),
        })
        .await
    }

    /// The replicas to queue copies for, when some of `pending` (the stores a quorum write
    /// left behind) are no longer replicas by this instance's view: the records decide, and
    /// a store a move replaced since the assignment stands for the store that replaced it
    /// (whose copy of the volume may have been taken before this write reached any replica;
    /// followed through later moves). A store the records know neither way is refused (400).
    async fn pending_after_moves(
        &self,
        volume: u32,
        pending: Vec<u64>,
    ) -> Result<Vec<u64>, DirectoryError> {
        let Some(v) = self.meta.get_volume(volume).await? else {
            return Err(DirectoryError::BadRequest(format!(
                "logical volume {volume} does not exist"
            )));
        };
        let v = v.value;
        let mut out: Vec<u64> = Vec::new();
        for s in pending {
            let mut cur = s;
            for _ in 0..=v.moved_away.len() {
                if v.replicas.contains(&cur) {
                    break;
                }
                match v.moved_away.iter().find(|m| m.store_id == cur) {
                    Some(m) => cur = m.replaced_by,
                    None => break,
                }
            }
            if !v.replicas.contains(&cur) {
                return Err(DirectoryError::BadRequest(format!(
                    "store {s} holds no replica of volume {volume}"
                )));
            }
            if cur != s {
                tracing::info!(
                    volume_id = volume,
                    store_id = s,
                    replaced_by = cur,
                    "a replica a quorum write left behind moved since; its copy goes to the store that replaced it"
                );
            }
            if !out.contains(&cur) {
                out.push(cur);
            }
        }
        Ok(out)
    }

    /// [`Directory::commit`], binding the request's idempotency key (if any) to the photo
    /// first. The key's record is written with a compare-and-set before the photo record, and
    /// carries the photo record, so a key is bound to one photo at a time whichever directory
    /// instance commits, and a commit cut between the two writes is completed by whoever reads
    /// the key next. Under a key already bound (within `idempotency_ttl_ms`) to another photo,
    /// the answer is that photo when both requests carry the same `request_hash` (a racing retry
    /// of the same upload), and a 409 otherwise; nothing is committed either way.
    pub async fn commit_keyed(&self, req: KeyedCommit) -> Result<PhotoInfo, DirectoryError> {
        let KeyedCommit {
            commit: req,
            idempotency_key,
            request_hash,
            pending_replicas,
        } = req;
        Self::validate_commit(&req)?;
        let key = match idempotency_key.as_deref() {
            Some(k) => Some((k, key_hash(k)?)),
            None => None,
        };
        let known = self.view().volumes.contains_key(&req.volume_id)
            || self.meta.get_volume(req.volume_id).await?.is_some();
        if !known {
            return Err(DirectoryError::BadRequest(format!(
                "logical volume {} does not exist",
                req.volume_id
            )));
        }
        let mut photo = Photo {
            id: req.id,
            volume_id: req.volume_id,
            cookie: req.cookie,
            kind: req.kind,
            variants: req.variants,
            chunks: req.chunks,
            created_ms: self.clock.now_ms(),
            deleted: false,
            deleted_ms: None,
            condemned: false,
        };
        // Replicas a quorum write left behind get their copies queued before the photo is
        // recorded: a commit that then fails leaves tasks the worker drops (no photo), never a
        // committed photo whose missing replicas nobody knows.
        let (replicas, moves): (Vec<u64>, bool) = self
            .view()
            .volumes
            .get(&req.volume_id)
            .map(|v| {
                (
                    v.replicas.iter().map(|r| r.store_id).collect(),
                    !v.info.moved_away.is_empty(),
                )
            })
            .unwrap_or_default();
        // The view decides only while it knows of no move of the volume: with one, it may name
        // a replica the move replaced since (the records say which store replaced it).
        let pending_replicas = if pending_replicas.is_empty()
            || (!moves && pending_replicas.iter().all(|s| replicas.contains(s)))
        {
            pending_replicas
        } else {
            self.pending_after_moves(req.volume_id, pending_replicas)
                .await?
        };
        for s in pending_replicas {
            self.enqueue_repair(
                photo.id,
                photo.volume_id,
                s,
                RepairAction::Copy,
                Vec::new(),
                "replica missing from a quorum write",
            )
            .await?;
        }
        if let Some((key, hash)) = key {
            match self.bind_key(key, hash, &photo, request_hash).await? {
                Bound::Ours(p) => photo = p,
                Bound::Other(p) => return Ok(self.photo_info(&p)),
            }
        }
        match self.meta.put_photo(&photo, Expect::Absent).await? {
            Cas::Applied { .. } => {
                metrics::counter!("haystack_directory_commit_total").increment(1);
                Ok(self.photo_info(&photo))
            }
            Cas::Conflict { .. } => {
                let existing = self.meta.get_photo(photo.id).await?.ok_or_else(|| {
                    DirectoryError::Conflict(format!("photo {} is being written", photo.id))
                })?;
                let e = &existing.value;
                if e.condemned {
                    Err(DirectoryError::Conflict(format!(
                        "photo {} was condemned by garbage collection (its needles may be \
                         gone); upload it again",
                        photo.id
                    )))
                } else if !e.deleted && e.same_contents(&photo) {
                    Ok(self.photo_info(e))
                } else {
                    Err(DirectoryError::Conflict(format!(
                        "photo {} is already committed with other contents",
                        photo.id
                    )))
                }
            }
        }
    }

    /// Binds `key` to `photo` (compare-and-set on the key's record). `Ours`: the key is bound
    /// to this photo (now or by an earlier try of this commit; the record's copy is the one to
    /// write). `Other`: it is bound to another live photo committed with the same request hash.
    pub(super) async fn bind_key(
        &self,
        key: &str,
        hash: u64,
        photo: &Photo,
        request_hash: Option<String>,
    ) -> Result<Bound, DirectoryError> {
        for _ in 0..CAS_RETRIES {
            let existing = self.meta.get_upload(hash).await?;
            let expect = match &existing {
                Some(u) if u.value.key != key => return Err(key_collision()),
                Some(u) if u.value.id == photo.id => match &u.value.photo {
                    Some(p) if p.same_contents(photo) => return Ok(Bound::Ours(p.clone())),
                    Some(_) => {
                        return Err(DirectoryError::Conflict(format!(
                            "photo {} is already bound to its key with other contents",
                            photo.id
                        )))
                    }
                    // A record of an earlier version's assign for this very id.
                    None => Expect::Version(u.version),
                },
                Some(u) if self.key_live(&u.value) => match self.settle(&u.value).await? {
                    Binding::Live(p) => {
                        let same_request = request_hash.is_some()
                            && u.value.request_hash == request_hash
                            && p.kind == photo.kind;
                        if same_request {
                            tracing::info!(
                                photo_id = photo.id,
                                bound = p.id,
                                "commit answered with the photo its key is bound to"
                            );
                            return Ok(Bound::Other(p));
                        }
                        return Err(DirectoryError::Conflict(format!(
                            "the idempotency key is bound to another upload (photo {})",
                            p.id
                        )));
                    }
                    Binding::Deleted(p) => {
                        return Err(DirectoryError::Conflict(format!(
                            "the idempotency key belongs to photo {}, which was deleted",
                            p.id
                        )))
                    }
                    Binding::Free => Expect::Version(u.version),
                },
                Some(u) => Expect::Version(u.version),
                None => Expect::Absent,
            };
            let record = UploadKey {
                key: key.to_string(),
                id: photo.id,
                cookie: photo.cookie,
                volume_id: photo.volume_id,
                kind: photo.kind,
                created_ms: self.clock.now_ms(),
                photo: Some(photo.clone()),
                request_hash: request_hash.clone(),
            };
            if let Cas::Applied { .. } = self.meta.put_upload(hash, &record, expect).await? {
                return Ok(Bound::Ours(photo.clone()));
            }
            // Another commit under the key changed its record: look again.
        }
        Err(DirectoryError::Conflict(
            "idempotency key is contended; retry".into(),
        ))
    }

    /// Garbage collection asks this before deleting needles of `id` that no photo references:
    /// a live photo is answered as it is; an id no photo has gets a tombstone (create-if-absent,
    /// so it cannot race a commit: one of the two wins), after which no commit, retry or replay
    /// of the id can succeed. So gc never deletes the needles of a photo that is, or can later
    /// become, committed, however long ago it looked.
    pub async fn condemn(&self, id: u64) -> Result<CondemnResponse, DirectoryError> {
        self.condemn_by(id, "garbage collection").await
    }

    /// [`Directory::condemn`] for `by` (a deleter about to drop needles of ids that have no
    /// photo: garbage collection, an erasure-coding encode dropping its replicas).
    pub(super) async fn condemn_by(
        &self,
        id: u64,
        by: &'static str,
    ) -> Result<CondemnResponse, DirectoryError> {
        if id == 0 {
            return Err(DirectoryError::BadRequest("id must not be 0".into()));
        }
        let answer = |state, photo| CondemnResponse { id, state, photo };
        for _ in 0..CAS_RETRIES {
            match self.meta.get_photo(id).await? {
                Some(p) if p.value.condemned => return Ok(answer(CondemnState::Condemned, None)),
                Some(p) if p.value.deleted => return Ok(answer(CondemnState::Deleted, None)),
                Some(p) => return Ok(answer(CondemnState::Live, Some(self.photo_info(&p.value)))),
                None => {
                    let now = self.clock.now_ms();
                    let tombstone = Photo {
                        id,
                        volume_id: 0,
                        cookie: 0,
                        kind: PhotoKind::Photo,
                        variants: Vec::new(),
                        chunks: Vec::new(),
                        created_ms: now,
                        deleted: true,
                        deleted_ms: Some(now),
                        condemned: true,
                    };
                    if let Cas::Applied { .. } =
                        self.meta.put_photo(&tombstone, Expect::Absent).await?
                    {
                        tracing::info!(photo_id = id, by, "id with no photo condemned");
                        metrics::counter!("haystack_directory_condemned_total").increment(1);
                        return Ok(answer(CondemnState::Condemned, None));
                    }
                }
            }
        }
        Err(DirectoryError::Conflict(format!(
            "photo {id} is contended; retry"
        )))
    }

    pub(super) fn read_base<'a>(&'a self, replicas: &'a [Replica], view: &'a View) -> &'a str {
        if let Some(cdn) = &self.config.cdn_prefix {
            return cdn;
        }
        if let Some(cache) = &self.config.cache_url {
            return cache;
        }
        replicas
            .iter()
            .find(|r| view.stores.get(&r.store_id).is_some_and(store_up))
            .or_else(|| replicas.first())
            .map_or("", |r| r.url.as_str())
    }

    /// The read URL of one needle of `p` under `base`, signed when signed reads are on.
    fn read_url_of(&self, base: &str, p: &Photo, alt: u32) -> String {
        self.config
            .security
            .sign_read_url(needle_url(base, p.volume_id, p.id, alt, p.cookie))
    }

    pub(super) fn photo_info(&self, p: &Photo) -> PhotoInfo {
        let view = self.view();
        let (replicas, writable) = match view.volumes.get(&p.volume_id) {
            Some(v) => (v.replicas.clone(), v.info.writable),
            None => (Vec::new(), false),
        };
        let base = self.read_base(&replicas, &view);
        PhotoInfo {
            id: p.id,
            cookie: p.cookie,
            volume_id: p.volume_id,
            kind: p.kind,
            variants: p
                .variants
                .iter()
                .map(|v| VariantInfo {
                    name: v.name.clone(),
                    alt: v.alt,
                    size_bytes: v.size_bytes,
                    content_type: v.content_type.clone(),
                    url: self.read_url_of(base, p, v.alt),
                })
                .collect(),
            chunks: p
                .chunks
                .iter()
                .map(|c| ChunkInfo {
                    alt: c.alt,
                    offset: c.offset,
                    size_bytes: c.size_bytes,
                    url: self.read_url_of(base, p, c.alt),
                })
                .collect(),
            created_ms: p.created_ms,
            replicas,
            volume_writable: writable,
        }
    }

    pub(super) async fn live_photo(&self, id: u64) -> Result<Versioned<Photo>, DirectoryError> {
        match self.meta.get_photo(id).await? {
            Some(p) if !p.value.deleted => Ok(p),
            Some(p) if !p.value.condemned => {
                Err(DirectoryError::Deleted(format!("photo {id} was deleted")))
            }
            _ => Err(DirectoryError::NotFound(format!("photo {id} not found"))),
        }
    }

    /// A committed photo with its replicas and read URLs.
    pub async fn lookup(&self, id: u64) -> Result<PhotoInfo, DirectoryError> {
        let p = self.live_photo(id).await?;
        metrics::counter!("haystack_directory_lookup_total").increment(1);
        Ok(self.photo_info(&p.value))
    }

    /// Which of `ids` are live photos, with their volume and cookie (`POST /v1/photos/live`):
    /// the caches' check on a miss, many photos per request. The same test as
    /// [`Directory::lookup`]: committed and not deleted. Each live photo comes back once.
    pub async fn live(&self, ids: &[u64]) -> Result<LiveResponse, DirectoryError> {
        if ids.len() > MAX_LIVE_BATCH {
            return Err(DirectoryError::BadRequest(format!(
                "at most {MAX_LIVE_BATCH} ids per request, not {}",
                ids.len()
            )));
        }
        // Each photo once, however often it was asked for.
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let found = join_all(ids.iter().map(|id| self.meta.get_photo(*id))).await;
        let mut live = Vec::with_capacity(ids.len());
        for p in found {
            if let Some(p) = p? {
                if !p.value.deleted {
                    live.push(LivePhoto {
                        id: p.value.id,
                        volume_id: p.value.volume_id,
                        cookie: p.value.cookie,
                    });
                }
            }
        }
        metrics::counter!("haystack_directory_lookup_total").increment(ids.len() as u64);
        Ok(LiveResponse { live })
    }

    /// The read URL of one variant or chunk (by alternate key).
    pub async fn read_url(&self, id: u64, alt: u32) -> Result<String, DirectoryError> {
        let p = self.live_photo(id).await?.value;
        if !p.alts().any(|a| a == alt) {
            return Err(DirectoryError::NotFound(format!(
                "photo {id} has no alternate key {alt}"
            )));
        }
        let view = self.view();
        let replicas = view
            .volumes
            .get(&p.volume_id)
            .map(|v| v.replicas.clone())
            .unwrap_or_default();
        let base = self.read_base(&replicas, &view);
        Ok(self.read_url_of(base, &p, alt))
    }

    /// Marks a photo deleted (durably, first), then tells its stores to delete the needles and
    /// the caches to purge them, best effort: a store that misses it leaves an orphan needle for
    /// garbage collection, never a visible photo, since lookups stop at the mark.
    pub async fn delete(&self, id: u64) -> Result<DeleteResponse, DirectoryError> {
        let mut marked = None;
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self
                .meta
                .get_photo(id)
                .await?
                .filter(|p| !p.value.condemned)
            else {
                return Err(DirectoryError::NotFound(format!("photo {id} not found")));
            };
            if cur.value.deleted {
                marked = Some(cur.value);
                break;
            }
            let mut p = cur.value;
            p.deleted = true;
            p.deleted_ms = Some(self.clock.now_ms());
            if let Cas::Applied { .. } = self
                .meta
                .put_photo(&p, Expect::Version(cur.version))
                .await?
            {
                tracing::info!(
                    photo_id = id,
                    volume_id = p.volume_id,
                    "photo marked deleted"
                );
                metrics::counter!("haystack_directory_delete_total").increment(1);
                marked = Some(p);
                break;
            }
        }
        let photo = marked.ok_or_else(|| {
            DirectoryError::Conflict(format!("photo {id} is contended; retry the delete"))
        })?;
        Ok(self.notify_delete(&photo).await)
    }

    /// The stores volume `id`'s record names now (replicas, shards, remote replicas) that
    /// `called` does not, with their URLs; the ids of those whose URL is not known here go
    /// in `unknown`. A record that cannot be read adds none (logged): the switch that changed
    /// it then compares the replicas itself.
    async fn replicas_added_since(
        &self,
        id: u32,
        called: &[Replica],
        unknown: &mut Vec<u64>,
        remote: &mut std::collections::HashSet<u64>,
    ) -> Vec<Replica> {
        let cur = match self.meta.get_volume(id).await {
            Ok(Some(v)) => v.value,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(volume_id = id, error = %e, "reading the volume again after a delete failed");
                return Vec::new();
            }
        };
        let view = self.view();
        let mut added = Vec::new();
        for store_id in cur.replicas.iter().chain(&cur.remote) {
            if called.iter().any(|r| r.store_id == *store_id)
                || added.iter().any(|r: &Replica| r.store_id == *store_id)
            {
                continue;
            }
            let url = match view.stores.get(store_id) {
                Some(s) => Some(s.url.clone()),
                None => self
                    .meta
                    .get_store(*store_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| s.value.url),
            };
            match url {
                Some(url) => added.push(Replica {
                    store_id: *store_id,
                    url,
                }),
                None => unknown.push(*store_id),
            }
            if !cur.replicas.contains(store_id) {
                remote.insert(*store_id);
            }
        }
        added
    }

    /// A needle's delete on one replica: whether it is done (a 404 is, but a remote
    /// replica's `no_such_volume`: one still seeding may hold the needle). `remote`: the
    /// volume's remote replicas.
    async fn delete_on_store(
        &self,
        r: &Replica,
        a: &NeedleAddr,
        remote: &std::collections::HashSet<u64>,
    ) -> (u64, bool) {
        let res = self.stores.delete_needle(&r.url, a).await;
        let unseeded = remote.contains(&r.store_id)
            && matches!(&res, Err(e) if e.code() == Some("no_such_volume"));
        (
            r.store_id,
            !unseeded && delete_notified("store", &r.url, res),
        )
    }

    pub(super) async fn notify_delete(&self, p: &Photo) -> DeleteResponse {
        let view = self.view();
        // The asynchronous remote replicas too: a delete must not wait for anything there.
        // One that has not received the needle yet answers 404 (done); the needle then
        // arrives with its delete flag if the source deleted it first. One that does not hold
        // the volume yet (seeding) gets the delete again from the repair worker.
        let replicas: Vec<Replica> = view
            .volumes
            .get(&p.volume_id)
            .map(|v| {
                let remote = v.info.remote_replicas.iter().map(|r| Replica {
                    store_id: r.store_id,
                    url: r.url.clone(),
                });
                v.replicas.iter().cloned().chain(remote).collect()
            })
            .unwrap_or_default();
        // A remote replica still seeding answers 404 `no_such_volume`: not done (its seed may
        // hold the needle, exported before the source's own delete, and shipping never sends
        // a delete flag for bytes already shipped), so the repair worker delivers it later.
        let mut remote_ids: std::collections::HashSet<u64> = view
            .volumes
            .get(&p.volume_id)
            .map(|v| v.info.remote_replicas.iter().map(|r| r.store_id).collect())
            .unwrap_or_default();
        let caches = self.config.purge_targets();
        let alts: Vec<u32> = p.alts().collect();
        let addrs: Vec<NeedleAddr> = alts
            .iter()
            .map(|alt| NeedleAddr::new(p.volume_id, p.id, *alt, p.cookie))
            .collect();
        let remote = &remote_ids;
        let store_calls = replicas.iter().flat_map(|r| {
            addrs
                .iter()
                .map(move |a| self.delete_on_store(r, a, remote))
        });
        let cache_calls = caches.iter().flat_map(|base| {
            addrs.iter().map(move |a| async move {
                delete_notified("cache", base, self.caches.purge(base, a).await)
            })
        });
        let mut store_calls = join_all(store_calls.collect::<Vec<_>>()).await;
        let cache_results = join_all(cache_calls.collect::<Vec<_>>()).await;
        // A replica switched in while the calls above ran (a move, a shard rebuild) was not
        // called: the record is read again once they answered, and the stores it names now
        // get the delete too. A switch after this read is followed by its own comparison
        // (`compare_moved`, a rebuild's carried deletes), which finds the delete on the
        // replicas called above.
        let mut unknown = Vec::new();
        let late = self
            .replicas_added_since(p.volume_id, &replicas, &mut unknown, &mut remote_ids)
            .await;
        // A remote replica found here is typically new, i.e. still seeding.
        let remote = &remote_ids;
        // A store named whose URL this instance does not know yet: the repair worker delivers
        // the delete once it does.
        store_calls.extend(unknown.into_iter().map(|s| (s, false)));
        if !late.is_empty() {
            tracing::info!(photo_id = p.id, volume_id = p.volume_id, stores = ?late.iter().map(|r| r.store_id).collect::<Vec<_>>(), "the volume's replicas changed during a delete; the new ones get it too");
            metrics::counter!("haystack_directory_deletes_to_switched_replicas_total")
                .increment(late.len() as u64);
            let calls = late.iter().flat_map(|r| {
                addrs
                    .iter()
                    .map(move |a| self.delete_on_store(r, a, remote))
            });
            store_calls.extend(join_all(calls.collect::<Vec<_>>()).await);
        }
        // A replica that missed the delete (down, partitioned, refusing) gets it retried by
        // the repair worker until it takes it: the needle must not stay readable there.
        let mut missed: Vec<u64> = store_calls
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(s, _)| *s)
            .collect();
        missed.dedup();
        for store_id in missed {
            if let Err(e) = self
                .enqueue_repair(
                    p.id,
                    p.volume_id,
                    store_id,
                    RepairAction::Delete,
                    Vec::new(),
                    "needle delete failed",
                )
                .await
            {
                tracing::error!(photo_id = p.id, store_id, error = %e, "queueing the retry of a failed needle delete failed; anti-entropy will find it");
            }
        }
        // A cache that missed the purge (down, partitioned, refusing) is asked again in the
        // background; until it takes it, its hits on the photo stop once they are older
        // than its `recheck_hits_after_ms` (the cache asks the directory then).
        // A purge forgets the whole photo (every alternate key), so one retry per cache.
        let mut missed_purges: Vec<(String, NeedleAddr)> = caches
            .iter()
            .flat_map(|base| addrs.iter().map(move |a| (base.clone(), *a)))
            .zip(&cache_results)
            .filter(|(_, ok)| !**ok)
            .map(|(call, _)| call)
            .collect();
        missed_purges.dedup_by(|a, b| a.0 == b.0);
        if !missed_purges.is_empty() {
            spawn_purge_retries(self.caches.clone(), p.id, missed_purges);
        }
        let store_results: Vec<bool> = store_calls.iter().map(|(_, ok)| *ok).collect();
        let count = |xs: &[bool], want: bool| xs.iter().filter(|x| **x == want).count() as u32;
        DeleteResponse {
            id: p.id,
            deleted: true,
            store_deletes_ok: count(&store_results, true),
            store_deletes_failed: count(&store_results, false),
            cache_purges_ok: count(&cache_results, true),
            cache_purges_failed: count(&cache_results, false),
        }
    }
}

/// Waits before each retry of a missed cache purge: about two minutes in all.
const PURGE_RETRY_DELAYS_MS: [u64; 7] = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000];

/// Photos whose missed purges are being retried at once, at most: past it a missed purge is
/// given up at once (counted; the caches' hit recheck bounds it), so that a cache that is
/// down for long cannot pile up tasks and sockets in the directory.
const MAX_PURGE_RETRIES_IN_FLIGHT: usize = 256;

static PURGE_RETRIES_IN_FLIGHT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Starts [`retry_purges`] for one photo's missed purges, unless too many are under way.
fn spawn_purge_retries(caches: CacheClient, photo_id: u64, left: Vec<(String, NeedleAddr)>) {
    use std::sync::atomic::Ordering;
    if PURGE_RETRIES_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_PURGE_RETRIES_IN_FLIGHT {
        PURGE_RETRIES_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        metrics::counter!("haystack_directory_cache_purges_abandoned_total")
            .increment(left.len() as u64);
        tracing::warn!(
            photo_id,
            "too many cache purges being retried; this one is not"
        );
        return;
    }
    tokio::spawn(async move {
        retry_purges(caches, photo_id, left).await;
        PURGE_RETRIES_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Retries cache purges a delete's notification missed, with a growing pause, until each is
/// taken (404 counts: nothing to purge) or the delays run out (counted, logged). In memory
/// only: a directory restart drops them, and the caches' hit recheck bounds what is left.
async fn retry_purges(caches: CacheClient, photo_id: u64, mut left: Vec<(String, NeedleAddr)>) {
    for delay in PURGE_RETRY_DELAYS_MS {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        let results = join_all(left.iter().map(|(base, a)| caches.purge(base, a))).await;
        let before = left.len();
        left = left
            .into_iter()
            .zip(results)
            .filter(|(_, r)| !matches!(r, Ok(()) | Err(ClientError::Api { status: 404, .. })))
            .map(|(call, _)| call)
            .collect();
        metrics::counter!("haystack_directory_cache_purges_retried_total")
            .increment((before - left.len()) as u64);
        if left.is_empty() {
            return;
        }
    }
    metrics::counter!("haystack_directory_cache_purges_abandoned_total")
        .increment(left.len() as u64);
    for (base, _) in &left {
        tracing::warn!(photo_id, cache = %base, "cache purge still failing after retries; the cache's hit recheck drops the photo");
    }
}

/// Whether a delete notification to `base` (a store or a cache) is done: answered, or 404.
fn delete_notified(what: &'static str, base: &str, r: Result<(), ClientError>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) if e.is_not_found() => true,
        Err(e @ ClientError::Api { .. }) => {
            tracing::warn!(%base, what, status = e.status(), "delete notification refused");
            false
        }
        Err(e) => {
            tracing::warn!(%base, what, error = %e, "delete notification failed");
            false
        }
    }
}
