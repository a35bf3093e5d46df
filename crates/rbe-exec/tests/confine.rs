//! The confinement hooks: the keeper is placed before it forks anything and
//! is still there when the action's processes are gone.

mod common;

use common::{never, sandbox, Env};
use rbe_exec::{run_confined, Confinement, ExecError};

/// Records what the runner told it, and checks the keeper at each step.
#[derive(Default)]
struct Probe {
    pid: Option<u32>,
    children_at_place: Option<String>,
    keeper_alive_at_end: Option<bool>,
    refuse: bool,
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

impl Confinement for Probe {
    fn active(&self) -> bool {
        true
    }
    async fn place(&mut self, pid: u32) -> Result<(), String> {
        self.pid = Some(pid);
        // The keeper is waiting at its gate: it has no children yet.
        self.children_at_place =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok();
        if self.refuse {
            return Err("no room at the inn".into());
        }
        Ok(())
    }
    async fn ended(&mut self) {
        self.keeper_alive_at_end = self.pid.map(alive);
    }
}

#[tokio::test]
async fn keeper_is_placed_before_forking_and_held_until_ended() {
    let env = Env::new();
    let mut probe = Probe::default();
    let out = run_confined(&sandbox(), &env.sh("echo hi"), never(), &mut probe)
        .await
        .expect("run");
    assert_eq!(out.exit_code, 0);
    assert_eq!(env.stdout(), "hi\n");
    let pid = probe.pid.expect("placed");
    assert_eq!(probe.children_at_place.as_deref(), Some(""));
    assert_eq!(probe.keeper_alive_at_end, Some(true));
    assert!(!alive(pid), "the keeper is gone after run returns");
}

#[tokio::test]
async fn refused_placement_runs_nothing() {
    let env = Env::new();
    let marker = env.root.join("ran");
    let mut probe = Probe {
        refuse: true,
        ..Probe::default()
    };
    let spec = env.sh("touch ran");
    let err = run_confined(&sandbox(), &spec, never(), &mut probe)
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ExecError::Confinement(ref m) if m.contains("inn")),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran");
    assert!(!alive(probe.pid.expect("asked")));
}

#[tokio::test]
async fn exec_failure_with_a_gate_does_not_hang() {
    let env = Env::new();
    std::fs::write(env.root.join("notexec"), "x").expect("write");
    let mut spec = env.spec(&["./notexec"]);
    spec.argv = vec!["/proc/self/cwd/notexec".into()];
    let mut probe = Probe::default();
    let r = run_confined(&sandbox(), &spec, never(), &mut probe).await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn a_very_short_command_with_a_gate() {
    let env = Env::new();
    for _ in 0..20 {
        let mut probe = Probe::default();
        let out = run_confined(&sandbox(), &env.spec(&["true"]), never(), &mut probe)
            .await
            .expect("run");
        assert_eq!(out.exit_code, 0);
        assert_eq!(probe.keeper_alive_at_end, Some(true));
    }
}
