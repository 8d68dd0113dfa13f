//! The report's wire format, against reports written by vm-agent before the types moved here
//! (`fixtures/report-v1*.json`, with their `vm-agent status` rendering in `*.txt`): every
//! field, every enum spelling, `null`s and timestamps must come back byte for byte.

use agent_status::{REPORT_VERSION, ReportError, Stage, StatusReport, TimerState};

const FULL: &str = include_str!("fixtures/report-v1.json");
const FULL_TEXT: &str = include_str!("fixtures/report-v1.txt");
const MINIMAL: &str = include_str!("fixtures/report-v1-minimal.json");
const MINIMAL_TEXT: &str = include_str!("fixtures/report-v1-minimal.txt");

/// As `vm-agent status --json` prints it.
fn print(report: &StatusReport) -> String {
    serde_json::to_string_pretty(report).expect("serialize") + "\n"
}

#[test]
fn a_report_round_trips_through_json_unchanged() {
    for (json, text) in [(FULL, FULL_TEXT), (MINIMAL, MINIMAL_TEXT)] {
        let report = StatusReport::from_json(json.as_bytes()).expect("parses");
        assert_eq!(print(&report), json, "the same bytes back");
        assert_eq!(
            StatusReport::from_json(print(&report).as_bytes()).expect("parses again"),
            report
        );
        assert_eq!(report.render(), text, "`vm-agent status` unchanged");
        assert!(report.render().lines().all(|l| l.chars().count() <= 80));
    }
}

#[test]
fn the_fixture_reads_as_typed_values() {
    let report = StatusReport::from_json(FULL.as_bytes()).expect("parses");
    assert_eq!(report.report_version, REPORT_VERSION);
    assert_eq!(report.stage, Stage::Ready);
    assert_eq!((report.jobs.running, report.jobs.queued), (1, 1));
    assert_eq!(report.timers[0].state, TimerState::Paused("hold".into()));
    assert!(report.idle_since.is_some());
    let minimal = StatusReport::from_json(MINIMAL.as_bytes()).expect("parses");
    assert_eq!(minimal.stage, Stage::WaitingCloudInit);
    assert_eq!((minimal.idle_since, minimal.hold), (None, None));
}

/// The fixture with `edit` applied to its JSON.
fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(FULL).expect("json");
    edit(&mut v);
    serde_json::to_vec(&v).expect("json")
}

#[test]
fn another_version_or_a_bad_field_is_an_error_that_says_which() {
    let newer = edited(|v| v["report_version"] = 2.into());
    let e = StatusReport::from_json(&newer).expect_err("version 2");
    assert!(matches!(e, ReportError::Version(_)), "{e:?}");
    assert!(
        e.to_string().contains("report_version 2")
            && e.to_string().contains("only report_version 1"),
        "{e}"
    );

    let unversioned = edited(|v| {
        v.as_object_mut().map(|o| o.remove("report_version"));
    });
    let e = StatusReport::from_json(&unversioned).expect_err("no version");
    assert!(matches!(e, ReportError::NoVersion), "{e:?}");

    let bad = edited(|v| v["jobs"]["running"] = "two".into());
    let e = StatusReport::from_json(&bad).expect_err("bad field");
    assert!(e.to_string().contains("`jobs.running`"), "{e}");

    let bad_stage = edited(|v| v["stage"] = "on-fire".into());
    let e = StatusReport::from_json(&bad_stage).expect_err("bad stage");
    assert!(
        e.to_string().contains("`stage`") && e.to_string().contains("on-fire"),
        "{e}"
    );

    let missing = edited(|v| {
        v["history"][1].as_object_mut().map(|o| o.remove("at"));
    });
    let e = StatusReport::from_json(&missing).expect_err("missing field");
    assert!(e.to_string().contains("history[1]"), "{e}");

    for not_json in [&b""[..], b"vm-agent: cannot connect", b"[1, 2]"] {
        let e = StatusReport::from_json(not_json).expect_err("not a report");
        assert!(matches!(e, ReportError::NotJson(_)), "{e:?}");
        assert!(e.to_string().starts_with("no status report"), "{e}");
    }
}
