//! Command-line interface: argument structs and the functions behind each command.
//! `main.rs` only parses and dispatches.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::render::{self, Mode, RenderOptions, Rendered};
use crate::spec;
use crate::validate::{self, Check, CheckStatus};

/// Bake golden images from one image spec.
#[derive(Debug, Parser)]
#[command(name = "image-builder", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render an image spec to cloud-init user-data (validates first).
    Render(RenderArgs),
    /// Validate an image spec: parse it, render both modes, check with the real tools.
    Validate(ValidateArgs),
}

/// `image-builder render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The image spec (YAML).
    pub spec: PathBuf,
    /// Write here (atomically) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Worker user-data, or bake user-data ending with the seal.
    #[arg(long, value_enum, default_value_t = Mode::Worker)]
    pub mode: Mode,
}

/// `image-builder validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The image spec (YAML).
    pub spec: PathBuf,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Errors of the CLI commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// A real tool rejected the output.
    #[error("{spec}: {check} rejected the rendered {mode} user-data:\n{detail}")]
    Check {
        /// The spec.
        spec: String,
        /// Which check.
        check: String,
        /// Which mode.
        mode: Mode,
        /// The tool's output.
        detail: String,
    },
    /// Writing the output failed.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec failed validation (details already reported).
    #[error("{0}: invalid")]
    Invalid(String),
}

fn warn_unavailable(checks: &[Check]) {
    for c in checks {
        if let CheckStatus::Unavailable { hint } = &c.status {
            tracing::warn!("{} skipped: tool not found ({hint})", c.name);
        }
    }
}

fn first_failure(spec: &Path, mode: Mode, checks: &[Check]) -> Result<(), CliError> {
    for c in checks {
        if let CheckStatus::Failed { detail } = &c.status {
            return Err(CliError::Check {
                spec: spec.display().to_string(),
                check: c.name.clone(),
                mode,
                detail: detail.clone(),
            });
        }
    }
    Ok(())
}

/// `render`: load, render, check with the real tools where present, write.
pub fn render_cmd(args: &RenderArgs) -> Result<(), CliError> {
    let loaded = spec::load(&args.spec)?;
    let rendered = render::render(&loaded, &RenderOptions::new(args.mode))?;
    for n in &rendered.notes {
        tracing::warn!("{n}");
    }
    let checks = validate::external_checks(&rendered);
    warn_unavailable(&checks);
    first_failure(&args.spec, args.mode, &checks)?;
    match &args.output {
        Some(path) => {
            crate::fsutil::write_atomic(path, rendered.text.as_bytes(), 0o600).map_err(|source| {
                CliError::Write {
                    path: path.clone(),
                    source,
                }
            })
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered.text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|source| CliError::Write {
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
        let mr = match result {
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
        report.modes.push(mr);
    }
    report
}

/// `validate`: print the report (human or JSON); error if the spec is invalid.
pub fn validate_cmd(args: &ValidateArgs) -> Result<(), CliError> {
    let report = validate_report(&args.spec);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_human(&report);
    }
    if report.valid {
        Ok(())
    } else {
        Err(CliError::Invalid(report.spec))
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
