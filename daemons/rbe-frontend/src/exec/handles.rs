//! Operation handles: what one client request holds of a shared execution.
//!
//! Identical Execute requests share one execution (the scheduler runs the
//! action once), but every request gets its own handle: its own operation
//! name, its owner, and its own state. A handle follows its execution
//! (QUEUED, EXECUTING, the final response) until its client cancels it:
//! then it is done, CANCELLED, and no longer counts as waiting, while the
//! execution runs on for the other handles. GetOperation, WaitExecution,
//! WaitOperation, CancelOperation and DeleteOperation act on one handle.
//!
//! Waiting is counted per stream: every Execute or WaitExecution stream
//! open on a handle that is not withdrawn is one of the scheduler's
//! waiters for the execution (`Scheduler::join`/`submit`/`add_waiter`,
//! `remove_waiter`); withdrawing a handle takes its streams off at once,
//! and the last waiter leaving cancels the execution.
//!
//! Handles that are done, or that no stream follows, are counted in
//! [`Retained`] against `execution.max_retained_bytes`; the oldest are
//! forgotten first. A handle goes when its execution expires (the
//! scheduler's retention), is forgotten for bytes, or is deleted; an
//! execution goes when its last handle has.
//!
//! [`Handles`] has no lock of its own: it is part of the owner's state
//! (see the module documentation of [`super`]). Making a handle done
//! replaces its watch channel at once, and returns a [`Wake`] that gives
//! the streams reading the old channel the whole response after the lock
//! is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use rbe_auth::{Identity, Permission};
use rbe_proto::longrunning::Operation;
use rbe_proto::reapi::{self, execution_stage, ExecuteResponse};
use rbe_sched::OpId;
use tokio::sync::watch;

use super::retained::{self, Retained};
use super::{instance_of_name, operation, rpc_status, Snapshot};

/// A handle's id: the order handles were made in, and ListOperations'
/// page token.
pub type HandleId = u64;

/// What a new handle is of, and for whom.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Who sent the Execute.
    pub owner: Identity,
    /// The instance it ran on.
    pub instance: String,
    /// The action.
    pub action_digest: reapi::Digest,
    /// Its digest function (REAPI enum value).
    pub digest_function: i32,
}

/// Who asks about a handle, and whether they hold a permission on the
/// instance it belongs to. The permission is only asked about for another
/// client's handle (so an owner's request never reaches the policy).
pub struct Caller<'a> {
    /// The caller.
    pub who: &'a Identity,
    /// Whether the caller holds a permission on the handle's instance.
    /// Asked under the owner's lock: it must answer from memory, without
    /// blocking or calling into [`super::Exec`].
    pub granted: &'a dyn Fn(Permission) -> bool,
}

/// Why a handle cannot be used.
#[derive(Debug, PartialEq)]
pub enum HandleError {
    /// No such handle on the instance its name carries.
    Unknown(String),
    /// Another client's handle, and the caller lacks `permission`.
    Denied {
        /// The operation name.
        name: String,
        /// The caller.
        who: String,
        /// What it would need.
        permission: Permission,
        /// On this instance.
        instance: String,
    },
    /// DeleteOperation on a handle not done yet.
    Running(String),
}

impl From<HandleError> for tonic::Status {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Unknown(name) => {
                tonic::Status::not_found(format!("operation {name:?} is unknown or has expired"))
            }
            HandleError::Denied {
                name,
                who,
                permission,
                instance,
            } => {
                // The audit line of a refusal (RBE_CLIENT=...), like the
                // other services' in `access`.
                tracing::warn!(
                    client = %who,
                    instance_name = %instance,
                    permission = permission.as_str(),
                    operation = %name,
                    "refused: permission denied"
                );
                tonic::Status::permission_denied(format!(
                    "operation {name:?} belongs to another client; {who} lacks the \
                 {permission} permission on instance {instance:?}"
                ))
            }
            HandleError::Running(name) => tonic::Status::failed_precondition(format!(
                "operation {name:?} is still running; cancel it first"
            )),
        }
    }
}

struct Handle {
    name: String,
    exec: OpId,
    origin: Origin,
    /// The handle's snapshots; after it is done, a fresh channel holding
    /// the kept (stripped) response.
    watch: watch::Sender<Snapshot>,
    /// Execute/WaitExecution streams open on it.
    streams: u32,
    /// Cancelled by a client: done, and no longer following its execution.
    withdrawn: bool,
    /// The Action and Command bytes, charged to the handle that submitted.
    payload_bytes: usize,
}

impl Handle {
    /// One more stream follows this handle.
    fn attach(&mut self, id: HandleId) -> Attached {
        self.streams += 1;
        Attached {
            id,
            exec: self.exec,
            rx: self.watch.subscribe(),
            name: self.name.clone(),
            action_digest: self.origin.action_digest.clone(),
            digest_function: self.origin.digest_function,
            waits: !self.withdrawn,
        }
    }

    fn done(&self) -> bool {
        self.watch.borrow().response.is_some()
    }

    fn operation(&self) -> Operation {
        operation(
            &self.name,
            &self.origin.action_digest,
            self.origin.digest_function,
            &self.watch.borrow(),
        )
    }

    /// Makes the handle done with `response`: what stays is `kept`, in a
    /// fresh channel; the streams following it get all of `response` on
    /// the old one when the returned [`Wake`] is sent.
    fn finish(&mut self, response: &Arc<ExecuteResponse>, kept: &ExecuteResponse) -> Option<Wake> {
        let completed = execution_stage::Value::Completed as i32;
        let old = std::mem::replace(
            &mut self.watch,
            watch::channel(Snapshot {
                stage: completed,
                response: Some(kept.clone()),
            })
            .0,
        );
        (old.receiver_count() > 0).then(|| Wake {
            tx: old,
            response: Arc::clone(response),
        })
    }
}

/// The final snapshot for the streams of a handle just made done, sent
/// after the owner's lock is released (cloning a large response for every
/// stream is the costly part). Receivers of the old channel read it there
/// (a closed watch keeps its last value); nothing else is sent on it.
#[must_use]
pub struct Wake {
    tx: watch::Sender<Snapshot>,
    response: Arc<ExecuteResponse>,
}

impl Wake {
    /// Gives the streams the whole response.
    pub fn send(self) {
        let completed = execution_stage::Value::Completed as i32;
        self.tx.send_modify(|s| {
            s.stage = completed;
            s.response = Some((*self.response).clone());
        });
    }
}

/// A handle a stream follows now: what the stream needs.
pub struct Attached {
    /// The handle.
    pub id: HandleId,
    /// Its execution.
    pub exec: OpId,
    /// Its snapshots.
    pub rx: watch::Receiver<Snapshot>,
    /// Its operation name.
    pub name: String,
    /// The action and its digest function, for the streamed Operations.
    pub action_digest: reapi::Digest,
    /// REAPI digest function.
    pub digest_function: i32,
    /// Whether the stream is one more waiter for the execution (the
    /// handle is not withdrawn).
    pub waits: bool,
}

/// A handle just withdrawn.
pub struct Withdrawn {
    /// Its execution.
    pub exec: OpId,
    /// The streams it had open: as many waiters leave the execution.
    pub waiters: u32,
}

/// Every operation handle; see the module documentation.
#[derive(Default)]
pub struct Handles {
    handles: BTreeMap<HandleId, Handle>,
    by_name: HashMap<String, HandleId>,
    by_exec: HashMap<OpId, BTreeSet<HandleId>>,
    retained: Retained<HandleId>,
    next: HandleId,
}

impl Handles {
    /// The handle `name`, if `caller` may act on it with `p`.
    fn find(
        &self,
        name: &str,
        caller: &Caller<'_>,
        p: Permission,
    ) -> Result<HandleId, HandleError> {
        let unknown = || HandleError::Unknown(name.to_string());
        let id = *self.by_name.get(name).ok_or_else(unknown)?;
        let h = self.handles.get(&id).ok_or_else(unknown)?;
        if instance_of_name(name) != Some(h.origin.instance.as_str()) {
            return Err(unknown());
        }
        if h.origin.owner != *caller.who && !(caller.granted)(p) {
            return Err(HandleError::Denied {
                name: name.to_string(),
                who: caller.who.to_string(),
                permission: p,
                instance: h.origin.instance.clone(),
            });
        }
        Ok(id)
    }

    fn fresh_id(&mut self) -> HandleId {
        self.next += 1;
        self.next
    }

    fn insert(&mut self, id: HandleId, h: Handle) {
        self.by_name.insert(h.name.clone(), id);
        self.by_exec.entry(h.exec).or_default().insert(id);
        self.handles.insert(id, h);
        self.recount(id);
    }

    /// Counts a handle in `retained` while it is done or nobody streams it.
    fn recount(&mut self, id: HandleId) {
        let Some(h) = self.handles.get(&id) else {
            self.retained.remove(id);
            return;
        };
        if h.streams > 0 && !h.done() {
            self.retained.remove(id);
            return;
        }
        let kept = h.watch.borrow();
        let bytes = retained::cost(&h.name, kept.response.as_ref(), h.payload_bytes);
        drop(kept);
        self.retained.add(id, bytes);
    }

    /// Forgets a handle; its execution if that was the last handle of it.
    fn remove(&mut self, id: HandleId) -> Option<OpId> {
        let h = self.handles.remove(&id)?;
        self.by_name.remove(&h.name);
        self.retained.remove(id);
        let siblings = self.by_exec.get_mut(&h.exec)?;
        siblings.remove(&id);
        if siblings.is_empty() {
            self.by_exec.remove(&h.exec);
            return Some(h.exec);
        }
        None
    }

    /// A new handle followed by one stream, the Execute's (already one
    /// of the execution's waiters).
    pub fn open(
        &mut self,
        name: String,
        exec: OpId,
        origin: Origin,
        stage: execution_stage::Value,
        payload_bytes: usize,
    ) -> Attached {
        let (tx, _) = watch::channel(Snapshot {
            stage: stage as i32,
            response: None,
        });
        let mut h = Handle {
            name,
            exec,
            origin,
            watch: tx,
            streams: 0,
            withdrawn: false,
            payload_bytes,
        };
        let id = self.fresh_id();
        let attached = h.attach(id);
        self.insert(id, h);
        attached
    }

    /// A new handle, done on arrival with `response` (an action-cache hit).
    pub fn open_done(
        &mut self,
        name: String,
        exec: OpId,
        origin: Origin,
        response: ExecuteResponse,
    ) {
        let mut kept = response;
        retained::strip_inlined(&mut kept);
        let (tx, _) = watch::channel(Snapshot {
            stage: execution_stage::Value::Completed as i32,
            response: Some(kept),
        });
        let h = Handle {
            name,
            exec,
            origin,
            watch: tx,
            streams: 0,
            withdrawn: false,
            payload_bytes: 0,
        };
        let id = self.fresh_id();
        self.insert(id, h);
    }

    /// One more stream follows the handle `name` (WaitExecution).
    pub fn attach(&mut self, name: &str, caller: &Caller<'_>) -> Result<Attached, HandleError> {
        let id = self.find(name, caller, Permission::OperationsRead)?;
        let Some(h) = self.handles.get_mut(&id) else {
            return Err(HandleError::Unknown(name.to_string()));
        };
        let attached = h.attach(id);
        self.recount(id);
        Ok(attached)
    }

    /// A stream following `id` ended. Returns whether it was one of the
    /// execution's waiters (the handle was not withdrawn meanwhile).
    pub fn detach(&mut self, id: HandleId) -> bool {
        let Some(h) = self.handles.get_mut(&id) else {
            // Forgotten: it was done, or detached, so nobody waited through it.
            return false;
        };
        h.streams = h.streams.saturating_sub(1);
        let waited = !h.withdrawn;
        self.recount(id);
        waited
    }

    /// The current Operation of the handle `name`.
    pub fn get(&self, name: &str, caller: &Caller<'_>) -> Result<Operation, HandleError> {
        let id = self.find(name, caller, Permission::OperationsRead)?;
        self.handles
            .get(&id)
            .map(Handle::operation)
            .ok_or_else(|| HandleError::Unknown(name.to_string()))
    }

    /// A receiver of the handle `name`'s snapshots (WaitOperation), not
    /// counted as a stream.
    pub fn subscribe(
        &self,
        name: &str,
        caller: &Caller<'_>,
    ) -> Result<watch::Receiver<Snapshot>, HandleError> {
        let id = self.find(name, caller, Permission::OperationsRead)?;
        self.handles
            .get(&id)
            .map(|h| h.watch.subscribe())
            .ok_or_else(|| HandleError::Unknown(name.to_string()))
    }

    /// CancelOperation: the handle `name` is done, CANCELLED, and its
    /// streams stop waiting for the execution. `None` when it was done
    /// already (cancelling it again changes nothing).
    pub fn withdraw(
        &mut self,
        name: &str,
        caller: &Caller<'_>,
        wakes: &mut Vec<Wake>,
    ) -> Result<Option<Withdrawn>, HandleError> {
        let id = self.find(name, caller, Permission::OperationsCancel)?;
        let Some(h) = self.handles.get_mut(&id) else {
            return Err(HandleError::Unknown(name.to_string()));
        };
        if h.done() {
            return Ok(None);
        }
        let cancelled = ExecuteResponse {
            status: Some(rpc_status(tonic::Code::Cancelled, "operation cancelled")),
            ..Default::default()
        };
        wakes.extend(h.finish(&Arc::new(cancelled.clone()), &cancelled));
        h.withdrawn = true;
        let w = Withdrawn {
            exec: h.exec,
            waiters: h.streams,
        };
        self.recount(id);
        Ok(Some(w))
    }

    /// DeleteOperation: forgets the handle `name`, which must be done.
    /// Returns its execution if that has no handle left.
    pub fn delete(&mut self, name: &str, caller: &Caller<'_>) -> Result<Option<OpId>, HandleError> {
        let id = self.find(name, caller, Permission::OperationsCancel)?;
        if self.handles.get(&id).is_some_and(|h| !h.done()) {
            return Err(HandleError::Running(name.to_string()));
        }
        Ok(self.remove(id))
    }

    /// Shows `stage` on the handles following `exec`. A watch send that
    /// never clones a response, so it is made under the owner's lock,
    /// where it cannot overtake the execution's completion.
    pub fn set_stage(&self, exec: OpId, stage: execution_stage::Value) {
        for id in self.by_exec.get(&exec).into_iter().flatten() {
            if let Some(h) = self.handles.get(id) {
                h.watch.send_if_modified(|s| {
                    let change = s.response.is_none() && s.stage != stage as i32;
                    if change {
                        s.stage = stage as i32;
                    }
                    change
                });
            }
        }
    }

    /// `exec` completed with `response`: every handle following it is done
    /// with it (its streams get all of it through `wakes`; what stays is
    /// stripped of inlined payloads).
    pub fn complete(&mut self, exec: OpId, response: &Arc<ExecuteResponse>, wakes: &mut Vec<Wake>) {
        let mut kept = (**response).clone();
        retained::strip_inlined(&mut kept);
        let ids: Vec<HandleId> = self
            .by_exec
            .get(&exec)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for id in ids {
            if let Some(h) = self.handles.get_mut(&id) {
                if !h.done() {
                    wakes.extend(h.finish(response, &kept));
                }
            }
            self.recount(id);
        }
    }

    /// Forgets the oldest counted handles while they keep more than `max`
    /// bytes; returns the executions left without a handle.
    pub fn evict_over(&mut self, max: usize) -> Vec<OpId> {
        let evict = self.retained.over(max);
        evict.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Forgets the handles of executions `live` says are gone (expired).
    pub fn retain_execs(&mut self, live: impl Fn(OpId) -> bool) {
        let gone: Vec<HandleId> = self
            .by_exec
            .iter()
            .filter(|(exec, _)| !live(**exec))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// Handles counted against the retention bound now, and their bytes.
    pub fn retained(&self) -> (usize, usize) {
        (self.retained.len(), self.retained.bytes())
    }

    /// One ListOperations page of `instance`'s handles after `after`:
    /// only `owner`'s when given. At most `page` operations and, beyond
    /// the first, `max_bytes`; the page token when more follow.
    pub fn list(
        &self,
        instance: &str,
        owner: Option<&Identity>,
        after: Option<HandleId>,
        page: usize,
        max_bytes: usize,
    ) -> (Vec<Operation>, Option<HandleId>) {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut listed = self
            .handles
            .range(from..)
            .filter(|(_, h)| h.origin.instance == instance)
            .filter(|(_, h)| owner.is_none_or(|o| h.origin.owner == *o))
            .peekable();
        let mut operations = Vec::new();
        let (mut bytes, mut last) = (0usize, None);
        while let Some((id, h)) = listed.peek() {
            if operations.len() == page {
                break;
            }
            let op = h.operation();
            // Field tag and length prefix included.
            let n = op.encoded_len() + 8;
            // One operation is always listed, so paging moves on.
            if !operations.is_empty() && bytes + n > max_bytes {
                break;
            }
            bytes += n;
            last = Some(**id);
            operations.push(op);
            listed.next();
        }
        let more = listed.peek().is_some();
        (operations, last.filter(|_| more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbe_auth::Via;

    fn origin(owner: &Identity) -> Origin {
        Origin {
            owner: owner.clone(),
            instance: "ci".into(),
            action_digest: reapi::Digest::default(),
            digest_function: 1,
        }
    }

    fn caller<'a>(who: &'a Identity, granted: &'a dyn Fn(Permission) -> bool) -> Caller<'a> {
        Caller { who, granted }
    }

    fn none(_: Permission) -> bool {
        false
    }

    fn ok() -> ExecuteResponse {
        ExecuteResponse {
            status: Some(rpc_status(tonic::Code::Ok, "")),
            ..Default::default()
        }
    }

    fn code(op: &Operation) -> Option<i32> {
        match op.result.as_ref() {
            Some(rbe_proto::longrunning::operation::Result::Response(a)) => {
                ExecuteResponse::decode(a.value.as_slice())
                    .ok()
                    .and_then(|r| r.status)
                    .map(|s| s.code)
            }
            _ => None,
        }
    }

    #[test]
    fn another_clients_handle_needs_the_permission() {
        let alice = Identity::new("alice", Via::Token);
        let bob = Identity::new("bob", Via::Token);
        let mut h = Handles::default();
        let _a = h.open(
            "ci/operations/a".into(),
            7,
            origin(&alice),
            execution_stage::Value::Queued,
            0,
        );
        let asked = std::cell::RefCell::new(Vec::new());
        let record = |p: Permission| {
            asked.borrow_mut().push(p);
            false
        };
        // The owner is never asked about.
        assert!(h.get("ci/operations/a", &caller(&alice, &record)).is_ok());
        assert!(asked.borrow().is_empty());
        let denied = |p| HandleError::Denied {
            name: "ci/operations/a".into(),
            who: "bob".into(),
            permission: p,
            instance: "ci".into(),
        };
        let bob_c = caller(&bob, &record);
        assert_eq!(
            h.get("ci/operations/a", &bob_c).err(),
            Some(denied(Permission::OperationsRead))
        );
        assert_eq!(
            h.attach("ci/operations/a", &bob_c).err(),
            Some(denied(Permission::OperationsRead))
        );
        assert_eq!(
            h.subscribe("ci/operations/a", &bob_c).err(),
            Some(denied(Permission::OperationsRead))
        );
        assert_eq!(
            h.withdraw("ci/operations/a", &bob_c, &mut vec![]).err(),
            Some(denied(Permission::OperationsCancel))
        );
        assert_eq!(
            h.delete("ci/operations/a", &bob_c).err(),
            Some(denied(Permission::OperationsCancel))
        );
        let st = tonic::Status::from(denied(Permission::OperationsCancel));
        assert_eq!(st.code(), tonic::Code::PermissionDenied);
        assert!(st.message().contains("operations-cancel"), "{st:?}");
        // Bob's attempts changed nothing.
        let op = h
            .get("ci/operations/a", &caller(&alice, &none))
            .expect("alice's");
        assert!(!op.done);
        // Someone may read but not cancel others' operations.
        let reader = |p| p == Permission::OperationsRead;
        let bob_r = caller(&bob, &reader);
        assert!(h.get("ci/operations/a", &bob_r).is_ok());
        assert!(matches!(
            h.withdraw("ci/operations/a", &bob_r, &mut vec![]),
            Err(HandleError::Denied { .. })
        ));
        // A name under another instance finds nothing.
        assert_eq!(
            h.get("other/operations/a", &caller(&alice, &none)).err(),
            Some(HandleError::Unknown("other/operations/a".into()))
        );
    }

    #[test]
    fn list_shows_own_handles_unless_granted() {
        let alice = Identity::new("alice", Via::Token);
        let bob = Identity::new("bob", Via::Certificate);
        let mut h = Handles::default();
        for (n, who) in [("a1", &alice), ("b1", &bob), ("a2", &alice)] {
            h.open_done(format!("ci/operations/{n}"), 1, origin(who), ok());
        }
        let names = |owner: Option<&Identity>| {
            let (ops, _) = h.list("ci", owner, None, 100, 1 << 20);
            ops.into_iter().map(|o| o.name).collect::<Vec<_>>()
        };
        assert_eq!(
            names(Some(&alice)),
            ["ci/operations/a1", "ci/operations/a2"]
        );
        assert_eq!(names(Some(&bob)), ["ci/operations/b1"]);
        assert_eq!(names(None).len(), 3);
        let (ops, token) = h.list("ci", None, None, 2, 1 << 20);
        assert_eq!(ops.len(), 2);
        let (rest, end) = h.list("ci", None, token, 2, 1 << 20);
        assert_eq!(rest.len(), 1);
        assert_eq!(end, None);
        assert!(h.list("other", None, None, 100, 1 << 20).0.is_empty());
    }

    #[test]
    fn a_withdrawn_handle_stays_cancelled_and_the_others_complete() {
        let anyone = Identity::anonymous();
        let mut h = Handles::default();
        let Attached {
            id: a, rx: mut ra, ..
        } = h.open(
            "ci/operations/a".into(),
            3,
            origin(&anyone),
            execution_stage::Value::Queued,
            10,
        );
        let Attached { rx: mut rb, .. } = h.open(
            "ci/operations/b".into(),
            3,
            origin(&anyone),
            execution_stage::Value::Queued,
            0,
        );
        h.set_stage(3, execution_stage::Value::Executing);
        assert_eq!(
            rb.borrow_and_update().stage,
            execution_stage::Value::Executing as i32
        );
        let c = caller(&anyone, &none);
        let mut wakes = vec![];
        let w = h
            .withdraw("ci/operations/a", &c, &mut wakes)
            .expect("mine")
            .expect("not done");
        assert_eq!((w.exec, w.waiters), (3, 1));
        assert!(
            h.withdraw("ci/operations/a", &c, &mut wakes)
                .expect("mine")
                .is_none(),
            "once"
        );
        assert!(
            ra.borrow().response.is_none(),
            "the stream hears of it once the wake is sent"
        );
        assert_eq!(wakes.len(), 1);
        wakes.drain(..).for_each(Wake::send);
        assert!(ra.borrow_and_update().response.is_some());
        assert!(!h.detach(a), "a withdrawn handle's stream no longer waits");
        h.complete(3, &Arc::new(ok()), &mut wakes);
        wakes.drain(..).for_each(Wake::send);
        let cancelled = tonic::Code::Cancelled as i32;
        assert_eq!(
            code(&h.get("ci/operations/a", &c).expect("a")),
            Some(cancelled)
        );
        assert_eq!(code(&h.get("ci/operations/b", &c).expect("b")), Some(0));
        assert!(rb.borrow_and_update().response.is_some());
        // Done handles are counted, and forgetting them frees the execution.
        assert_eq!(h.retained().0, 2);
        assert_eq!(h.delete("ci/operations/a", &c), Ok(None));
        assert_eq!(h.evict_over(0), vec![3]);
        assert_eq!(h.retained(), (0, 0));
    }

    #[test]
    fn handles_nobody_streams_are_bounded_in_bytes() {
        let anyone = Identity::anonymous();
        let mut h = Handles::default();
        let mut names = Vec::new();
        for i in 0..1000 {
            let name = format!("ci/operations/{i}");
            let Attached { id, .. } = h.open(
                name.clone(),
                1,
                origin(&anyone),
                execution_stage::Value::Executing,
                0,
            );
            assert!(h.detach(id));
            names.push(name);
            assert!(
                h.evict_over(64 << 10).is_empty(),
                "the execution keeps newer handles"
            );
            assert!(h.retained().1 <= 64 << 10);
        }
        let c = caller(&anyone, &none);
        assert!(h.get(&names[0], &c).is_err(), "the oldest went first");
        assert!(h.get(&names[999], &c).is_ok());
        // Attached again, a handle is not counted (its stream bounds it).
        let before = h.retained().0;
        let a = h.attach(&names[999], &c).expect("attach");
        assert!(a.waits);
        assert_eq!(h.retained().0, before - 1);
    }
}
