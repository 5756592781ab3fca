//! `CLOCK_STEPPED`, caused by a real step of this machine's wall clock (`clock_settime`, as
//! root: CAP_SYS_TIME). Alone in its own test binary, so no other test's agent runs while the
//! clock is off; the step is undone on every path (a guard that puts the wall clock back where
//! the monotonic clock says it should be). A machine that refuses the step fails the test.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use jex_e2e::*;
use nix::time::{ClockId, clock_gettime, clock_settime};

/// The step: far beyond the agent's 2 s tolerance, small enough to harm nothing else.
const STEP: Duration = Duration::from_secs(30);

/// Puts the wall clock back on drop: to where it was when made, plus the monotonic time since.
struct ClockGuard {
    wall_at_start: Duration,
    mono_at_start: Instant,
}

impl ClockGuard {
    fn new() -> Result<Self> {
        let wall = clock_gettime(ClockId::CLOCK_REALTIME)?;
        Ok(Self {
            wall_at_start: Duration::from(wall),
            mono_at_start: Instant::now(),
        })
    }

    /// Sets the wall clock `ahead` of where it should be.
    fn set_ahead(&self, ahead: Duration) -> Result<()> {
        let should = self.wall_at_start + self.mono_at_start.elapsed();
        clock_settime(ClockId::CLOCK_REALTIME, (should + ahead).into())
            .context("stepping the wall clock (needs root with CAP_SYS_TIME)")?;
        Ok(())
    }
}

impl Drop for ClockGuard {
    fn drop(&mut self) {
        let _ = self.set_ahead(Duration::ZERO);
    }
}

#[tokio::test]
async fn a_real_clock_step_is_reported_then_cleared_after_the_hold() -> Result<()> {
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let agent = start_agent(&pki, tmp.path(), &short_hold())?;
    let mut c = client(&pki, &agent, Some(&pki.observer())).await?;
    ensure!(host_conditions(&mut c).await?.is_empty());

    let guard = ClockGuard::new()?;
    guard.set_ahead(STEP)?;
    let raised = wait_conditions(&mut c, Duration::from_secs(20), "the step is seen", |c| {
        has_condition(c, "CLOCK_STEPPED")
    })
    .await;
    // Back at once, whatever was seen: the step back is a step too, and extends the hold.
    guard.set_ahead(Duration::ZERO)?;
    let raised = raised?;
    let (_, _, message) = raised
        .iter()
        .find(|(k, _, _)| k == "CLOCK_STEPPED")
        .context("raised")?;
    let seconds: f64 = message
        .strip_prefix("the wall clock stepped +")
        .and_then(|rest| rest.split(" s at ").next())
        .with_context(|| format!("a forward step: {message}"))?
        .parse()?;
    ensure!(
        (seconds - STEP.as_secs_f64()).abs() < 0.5,
        "the step measured: {message}"
    );
    let status = agent.status_cli()?;
    ensure!(status.contains("  - CLOCK_STEPPED for "), "{status}");
    agent.wait_for_log(
        &["condition raised", "CLOCK_STEPPED"],
        Duration::from_secs(10),
    )?;

    wait_conditions(&mut c, Duration::from_secs(30), "the hold ends", |c| {
        !has_condition(c, "CLOCK_STEPPED")
    })
    .await?;
    agent.wait_for_log(
        &["condition cleared", "CLOCK_STEPPED"],
        Duration::from_secs(10),
    )?;
    Ok(())
}
