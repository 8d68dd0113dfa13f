//! `render` and `validate`.

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;

use super::print_json;
use crate::cli::{RenderArgs, ValidateArgs};
use crate::error::Error;
use crate::render::{self, Mode, RenderOptions, Rendered};
use crate::spec;
use crate::validate::{self, Check, CheckStatus};

fn warn_unavailable(checks: &[Check]) {
    for c in checks {
        if let CheckStatus::Unavailable { hint } = &c.status {
            tracing::warn!("{} skipped: tool not found ({hint})", c.name);
        }
    }
}

fn first_failure(spec: &Path, mode: Mode, checks: &[Check]) -> Result<(), Error> {
    for c in checks {
        if let CheckStatus::Failed { detail } = &c.status {
            return Err(Error::Rejected {
                spec: spec.to_owned(),
                check: c.name.clone(),
                mode,
                detail: detail.clone(),
            });
        }
    }
    Ok(())
}

/// `render`: load, render, check with the real tools where present, write.
pub fn render(args: &RenderArgs) -> Result<(), Error> {
    let loaded = spec::load(&args.spec)?;
    let rendered = render::render(&loaded, &RenderOptions::new(args.mode))?;
    for n in &rendered.notes {
        tracing::warn!("{n}");
    }
    let checks = validate::external_checks(&rendered);
    warn_unavailable(&checks);
    first_failure(&args.spec, args.mode, &checks)?;
    match &args.output {
        Some(path) => artifact_store::fsutil::write_atomic(path, rendered.text.as_bytes(), 0o600)
            .map_err(|source| Error::Write {
                path: path.clone(),
                source,
            }),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered.text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| Error::Write {
                    path: "<stdout>".into(),
                    source,
                })
        }
    }
}

/// The JSON report of `validate`.
#[derive(Debug, Serialize)]
pub struct ValidateReport {
    /// The spec file.
    pub spec: String,
    /// Overall verdict.
    pub valid: bool,
    /// The spec error, if it did not load.
    pub error: Option<String>,
    /// Per mode: size, steps and external checks.
    pub modes: Vec<ModeReport>,
}

/// One mode's part of the report.
#[derive(Debug, Serialize)]
pub struct ModeReport {
    /// Worker or bake.
    pub mode: Mode,
    /// Rendered size in bytes.
    pub bytes: usize,
    /// Steps in run order.
    pub steps: Vec<String>,
    /// Notes.
    pub notes: Vec<String>,
    /// External checks.
    pub checks: Vec<Check>,
    /// Render error, if any.
    pub error: Option<String>,
}

/// Build the validate report (no printing).
pub fn validate_report(path: &Path) -> ValidateReport {
    let mut report = ValidateReport {
        spec: path.display().to_string(),
        valid: true,
        error: None,
        modes: Vec::new(),
    };
    let loaded = match spec::load(path) {
        Ok(l) => l,
        Err(e) => {
            report.valid = false;
            report.error = Some(e.to_string());
            return report;
        }
    };
    for mode in [Mode::Worker, Mode::Bake] {
        let result: Result<Rendered, _> = render::render(&loaded, &RenderOptions::new(mode));
        let mode_report = match result {
            Ok(r) => {
                let checks = validate::external_checks(&r);
                if checks
                    .iter()
                    .any(|c| matches!(c.status, CheckStatus::Failed { .. }))
                {
                    report.valid = false;
                }
                ModeReport {
                    mode,
                    bytes: r.text.len(),
                    steps: r.steps,
                    notes: r.notes,
                    checks,
                    error: None,
                }
            }
            Err(e) => {
                report.valid = false;
                ModeReport {
                    mode,
                    bytes: 0,
                    steps: vec![],
                    notes: vec![],
                    checks: vec![],
                    error: Some(e.to_string()),
                }
            }
        };
        report.modes.push(mode_report);
    }
    report
}

/// `validate`: print the report (human or JSON); error if the spec is invalid.
pub fn validate(args: &ValidateArgs) -> Result<(), Error> {
    let report = validate_report(&args.spec);
    if args.json {
        print_json(&report);
    } else {
        print_human(&report);
    }
    if report.valid {
        Ok(())
    } else {
        Err(Error::Invalid(args.spec.clone()))
    }
}

fn print_human(r: &ValidateReport) {
    if let Some(e) = &r.error {
        println!("{e}");
        return;
    }
    for m in &r.modes {
        match &m.error {
            Some(e) => println!("{} mode: {e}", m.mode),
            None => {
                println!(
                    "{} mode: {} bytes, {} steps: {}",
                    m.mode,
                    m.bytes,
                    m.steps.len(),
                    m.steps.join(", ")
                );
                for n in &m.notes {
                    println!("  note: {n}");
                }
                for c in &m.checks {
                    match &c.status {
                        CheckStatus::Passed => println!("  ok      {}", c.name),
                        CheckStatus::Failed { detail } => {
                            println!("  FAILED  {}: {detail}", c.name)
                        }
                        CheckStatus::Unavailable { hint } => {
                            println!("  skipped {} ({hint})", c.name)
                        }
                    }
                }
            }
        }
    }
    println!("{}: {}", r.spec, if r.valid { "valid" } else { "INVALID" });
}
