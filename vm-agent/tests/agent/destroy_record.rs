//! The agent's own record of why it ends the machine (`destroy.record_file`; workers use
//! /dev/kmsg so the serial console shows it): the timer, its reason, the jobs.

use crate::common::*;
use std::time::Duration;
use vm_agent::config::Limit;

#[test]
fn the_destroy_record_names_the_timer_and_that_no_job_ran() {
    let mut a = Agent::new();
    a.cfg.timers.idle_timeout = Limit::After(Duration::from_secs(2));
    let record = a.path("destroy-record");
    std::fs::write(&record, "").expect("record file");
    a.cfg.destroy.record_file = Some(record.clone());
    a.cloud_init_done();
    a.start();
    a.wait_status("idle timer", 15, |s| s["destroy"]["state"] == "dry-run");
    let text = std::fs::read_to_string(&record).expect("read record");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("vm-agent: destroying this machine (dry-run): idle timer fired"),
        "{text}"
    );
    assert!(text.contains("jobs running 0, queued 0"), "{text}");
}
