//! Reviewed plans: reading a plan file that `reconcile --save-plan FILE` wrote, refusing one
//! made for another tenant or connection, or too long ago (`reconcile.max_plan_age_hours`),
//! and showing it readably (`driftsync apply --dry-run FILE`). Applying it is a full run with
//! the plan in its options (`run::RunOptions::plan`): only the plan's pushes are sent, and only
//! to users still as the plan saw them.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::model::saved_plan::{FORMAT, SavedPlan};
use crate::run::plan_tenant;

/// Reads and checks the plan at `path` for this configuration, now.
pub fn load(path: &Path, config: &Config) -> anyhow::Result<SavedPlan> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the plan {}", path.display()))?;
    let plan: SavedPlan = serde_json::from_str(&text).with_context(|| {
        format!(
            "the plan {} is not a driftsync plan (reconcile --save-plan writes them)",
            path.display()
        )
    })?;
    if plan.format != FORMAT {
        bail!(
            "the plan {} has format {:?}; this driftsync reads {FORMAT:?}: make a new plan",
            path.display(),
            plan.format
        );
    }
    let tenant = plan_tenant(config);
    if plan.tenant != tenant || plan.connection != config.auth0.connection {
        bail!(
            "refusing the plan {}: it was made for tenant {:?}, connection {:?}, and this \
             configuration is for tenant {tenant:?}, connection {:?}",
            path.display(),
            plan.tenant,
            plan.connection,
            config.auth0.connection
        );
    }
    let made = crate::timestamp::parse_rfc3339(&plan.made_at)
        .with_context(|| format!("the plan {} has no valid made_at", path.display()))?;
    let now = crate::timestamp::parse_rfc3339(&crate::timestamp::now_rfc3339()).unwrap_or(0);
    let limit = i64::from(config.reconcile.max_plan_age_hours) * 3_600_000_000;
    if now - made > limit {
        bail!(
            "refusing the plan {}: it was made at {}, more than reconcile.max_plan_age_hours = {} \
             ago, and the data has likely moved on: make a new plan with `driftsync reconcile \
             --save-plan FILE`",
            path.display(),
            plan.made_at,
            config.reconcile.max_plan_age_hours
        );
    }
    Ok(plan)
}

/// The plan, readably (or as its own JSON).
pub fn show(plan: &SavedPlan, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, plan)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "plan of run {} made at {} for tenant {}, connection {}: {} users",
        plan.run_id,
        plan.made_at,
        plan.tenant,
        plan.connection,
        plan.users.len()
    )?;
    for user in &plan.users {
        writeln!(out, "\n{}", user.user_id)?;
        for (key, value) in &user.auth0_before {
            writeln!(out, "  Auth0 now   {key} = {value}")?;
        }
        for request in &user.requests {
            writeln!(out, "  PATCH       {request}")?;
        }
    }
    writeln!(
        out,
        "\nNothing was sent. `driftsync apply FILE` sends these requests to the users still as \
         the plan saw them."
    )?;
    Ok(())
}
