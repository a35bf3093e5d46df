//! The driver's event loop: socket, foca timers, the frontend's reports and
//! commands, resolved seeds.

use super::*;

/// A far-off instant for `sleep_until` arms that are disabled anyway.
fn never() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Task {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut published: watch::Receiver<Option<LoadReport>>,
        mut seeds: mpsc::Receiver<Vec<SocketAddr>>,
    ) {
        // Room for more than the largest datagram we accept, so an
        // oversized one is seen as such rather than silently cut to size.
        let mut buf = vec![0u8; MAX_DATAGRAM * 2];
        let mut refresh = tokio::time::interval(self.report_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let min_gap = self.report_interval / 5;
        let mut report_due: Option<Instant> = None;
        let mut seeds_open = true;
        let mut heal = tokio::time::interval(HEAL_INTERVAL);
        heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_timer = self.timers.keys().next().map(|(at, _)| *at);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&mut buf[..n], from),
                    // ICMP errors of earlier sends surface here on some
                    // systems; nothing to do about them.
                    Err(e) => {
                        tracing::debug!(error = %e, "gossip receive error");
                        // A persistent error must not become a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(never)), if next_timer.is_some() => {
                    self.fire_timers();
                }
                changed = published.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = Instant::now();
                    let earliest = self.last_sent.map_or(now, |t| t + min_gap);
                    report_due = Some(report_due.map_or(earliest, |d| d.min(earliest)).max(now));
                }
                _ = tokio::time::sleep_until(report_due.unwrap_or_else(never)), if report_due.is_some() => {
                    report_due = None;
                    let r = published.borrow_and_update().clone();
                    self.send_report(r);
                }
                _ = refresh.tick() => {
                    let stale = self
                        .last_sent
                        .is_none_or(|t| t.elapsed() >= self.report_interval.mul_f32(0.9));
                    if stale && report_due.is_none() {
                        let r = published.borrow().clone();
                        self.send_report(r);
                    }
                }
                _ = heal.tick() => self.heal(),
                addrs = seeds.recv(), if seeds_open => match addrs {
                    Some(addrs) => self.announce(addrs),
                    None => seeds_open = false,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Reload(keyring, done)) => {
                        self.wire.reload(keyring);
                        tracing::info!("cluster keys reloaded");
                        let _ = done.send(());
                    }
                    Some(Command::Leave(done)) => {
                        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
                            tracing::debug!(error = %e, "foca leave");
                        }
                        self.flush().await;
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
            }
            self.flush().await;
        }
    }

    fn log_bad(&mut self, peer: SocketAddr, reason: &str) {
        let now = Instant::now();
        if self.log_limit.len() >= MAX_LOG_PEERS {
            self.log_limit
                .retain(|_, t| now.duration_since(*t) < LOG_EVERY);
            if self.log_limit.len() >= MAX_LOG_PEERS {
                self.log_limit.clear();
            }
        }
        let due = self
            .log_limit
            .get(&peer)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            self.log_limit.insert(peer, now);
            tracing::warn!(%peer, reason, "gossip datagram refused (logged once a minute per address)");
        }
    }

    fn on_datagram(&mut self, data: &mut [u8], from: SocketAddr) {
        bump(&self.counters.packets_in, 1);
        bump(&self.counters.bytes_in, data.len() as u64);
        let plain = match self.wire.open(data) {
            Ok(p) => p,
            Err(e) => {
                let c = &self.counters;
                bump(
                    match e {
                        WireError::Truncated(_) => &c.malformed,
                        WireError::Oversized(_) => &c.oversized,
                        WireError::Replayed => &c.replays,
                        WireError::UnknownVersion(_)
                        | WireError::UnknownKey(_)
                        | WireError::AuthFailed => &c.auth_failures,
                    },
                    1,
                );
                self.log_bad(from, e.reason());
                return;
            }
        };
        match self.foca.handle_data(plain, &mut self.rt) {
            Ok(()) => {}
            // Our own datagram come back (a seed entry naming us).
            Err(foca::Error::DataFromOurselves) => {}
            Err(e) => {
                bump(&self.counters.malformed, 1);
                tracing::debug!(peer = %from, error = %e, "authentic gossip datagram foca refused");
                self.log_bad(from, "malformed");
            }
        }
        self.take_reports();
    }

    fn take_reports(&mut self) {
        let now = Instant::now();
        for r in self.inbox.drain() {
            let Ok(node) = NodeName::new(&r.node) else {
                continue;
            };
            let newer = self
                .reports
                .get(&node)
                .is_none_or(|(old, _)| (r.generation, r.seq) > (old.generation, old.seq));
            if newer {
                if !self.reports.contains_key(&node) && self.reports.len() >= MAX_REPORTS {
                    self.prune_reports();
                }
                self.reports.insert(node, (r, now));
            }
        }
    }

    /// Drops reports of nodes foca does not know, then any, to stay bounded.
    fn prune_reports(&mut self) {
        let known: std::collections::HashSet<&NodeName> = self
            .foca
            .iter_membership_state()
            .map(|m| &m.id().node)
            .collect();
        self.reports.retain(|n, _| known.contains(n));
        if self.reports.len() >= MAX_REPORTS {
            self.reports.clear();
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                tracing::debug!(error = %e, "foca timer");
            }
        }
    }

    /// Ends suspicions nobody else will end, and announces to every known
    /// member while foca waits to hear of its identity (see
    /// [`crate::heal`]).
    fn heal(&mut self) {
        let due = self
            .watch
            .check(self.foca.iter_membership_state(), self.started.elapsed());
        for m in &due {
            tracing::info!(node = %m.id().node, generation = m.id().generation, "cluster member suspect for too long; declared down");
        }
        if !due.is_empty() {
            if let Err(e) = self.foca.apply_many(due.into_iter(), true, &mut self.rt) {
                tracing::debug!(error = %e, "foca apply");
            }
        }
        if !self.connected {
            let addrs = crate::heal::announce_targets(self.foca.iter_membership_state());
            self.announce(addrs);
        }
    }

    fn announce(&mut self, addrs: Vec<SocketAddr>) {
        let own = self.foca.identity().gossip_addr;
        for addr in addrs {
            let is_me = addr == own
                || addr == self.local_addr
                || (addr.port() == self.local_addr.port()
                    && (addr.ip().is_loopback() || addr.ip() == own.ip())
                    && self.local_addr.ip().is_unspecified());
            if is_me {
                continue;
            }
            if let Err(e) = self.foca.announce(Member::seed(addr), &mut self.rt) {
                tracing::debug!(error = %e, seed = %addr, "foca announce");
            }
        }
    }

    /// Sends the frontend's latest report as ours, with the next seq.
    fn send_report(&mut self, report: Option<LoadReport>) {
        let Some(mut r) = report else {
            return;
        };
        let me = self.foca.identity();
        r.node = me.node.as_str().to_owned();
        r.generation = me.generation;
        r.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        match encode_report(&r) {
            Ok(data) => {
                if let Err(e) = self.foca.add_broadcast(&data) {
                    tracing::warn!(error = %e, "could not queue our load report");
                }
                // Push it out now rather than waiting for the next probe
                // or gossip round to carry it.
                if let Err(e) = self.foca.broadcast(&mut self.rt) {
                    tracing::debug!(error = %e, "foca broadcast");
                }
            }
            Err(e) => tracing::warn!(error = %e, "load report not sent"),
        }
        self.last_sent = Some(Instant::now());
    }

    /// Sends what foca asked to send, arms its timers, applies its
    /// notifications and republishes the view if it changed.
    async fn flush(&mut self) {
        // Applying updates after a rejoin can ask for more sends.
        while self.flush_once().await {}
        self.publish_view();
    }

    /// One round of [`Self::flush`]; true if it applied updates whose
    /// output is still to flush.
    async fn flush_once(&mut self) -> bool {
        while let Some((to, data)) = self.rt.to_send() {
            let sealed = match self.wire.seal(&data) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "gossip datagram not sealed");
                    continue;
                }
            };
            match self.socket.send_to(&sealed, to.gossip_addr).await {
                Ok(n) => {
                    bump(&self.counters.packets_out, 1);
                    bump(&self.counters.bytes_out, n as u64);
                }
                Err(e) => {
                    bump(&self.counters.send_errors, 1);
                    tracing::debug!(peer = %to.gossip_addr, error = %e, "gossip send failed");
                }
            }
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            // A duration too large for the clock (a config mistake) means
            // "not in the lifetime of this process".
            let at = now.checked_add(after).unwrap_or_else(never);
            self.timers.insert((at, self.timer_seq), timer);
        }
        let mut resend = false;
        let mut rejoined = false;
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(m) => {
                    tracing::info!(node = %m.node, generation = m.generation, addr = %m.gossip_addr, "cluster member up");
                }
                OwnedNotification::MemberDown(m) => {
                    tracing::info!(node = %m.node, generation = m.generation, "cluster member down");
                }
                OwnedNotification::Rename(old, new) => {
                    tracing::info!(node = %new.node, generation = new.generation, previous_generation = old.generation, "cluster member restarted");
                }
                OwnedNotification::Rejoin(me) => {
                    tracing::warn!(
                        generation = me.generation,
                        "the cluster declared this host down; rejoined with a new generation"
                    );
                    resend = true;
                    rejoined = true;
                    self.connected = false;
                }
                OwnedNotification::Defunct => {
                    tracing::warn!("this host is out of the cluster");
                    self.connected = false;
                }
                OwnedNotification::Active => self.connected = true,
                OwnedNotification::Idle => self.connected = false,
            }
        }
        if resend {
            // Our next report must carry the new generation.
            self.last_sent = None;
        }
        if rejoined {
            let clear = crate::heal::clear_suspicions(self.foca.iter_membership_state());
            if !clear.is_empty() {
                tracing::info!(
                    members = clear.len(),
                    "suspicions raised before the rejoin dropped"
                );
                if let Err(e) = self.foca.apply_many(clear.into_iter(), false, &mut self.rt) {
                    tracing::debug!(error = %e, "foca apply");
                }
                return true;
            }
        }
        false
    }

    fn publish_view(&mut self) {
        let me = self.foca.identity().clone();
        let mut members: Vec<MemberView> = self
            .foca
            .iter_membership_state()
            .filter(|m| !m.id().is_seed() && m.id().node != me.node)
            .map(|m| MemberView {
                member: m.id().clone(),
                state: match m.state() {
                    State::Alive => MemberState::Up,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                },
                report: self
                    .reports
                    .get(&m.id().node)
                    .filter(|(r, _)| r.generation == m.id().generation)
                    .cloned(),
            })
            .collect();
        members.sort_by(|a, b| a.member.node.cmp(&b.member.node));
        let live = members
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .count();
        self.live.store(live, Ordering::Relaxed);
        let view = ClusterView { me, members };
        self.view.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }
}
