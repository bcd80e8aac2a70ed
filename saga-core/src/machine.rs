//! The saga state machine as a pure function: `(definition, state, event) → (state,
//! commands)`. No I/O, no clock: the [`Orchestrator`](crate::Orchestrator) persists the
//! result and dispatches the commands.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SagaDefinition;

/// Overall status of a saga (the SPEC states; `Running` is shown with the awaited
/// step's label, e.g. `PAYMENT_PENDING`).
///
/// Whether a saga is over depends on more than its status (a `FAILED` saga with an
/// abandoned step still compensates that step if it succeeds late): ask
/// [`SagaState::is_terminal`], or [`SagaInstance::is_terminal`](crate::SagaInstance::is_terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    /// Created, no step dispatched yet.
    Started,
    /// A step's action is awaited.
    Running,
    /// Every step succeeded. Terminal.
    Completed,
    /// Undoing succeeded steps in reverse order.
    Compensating,
    /// Compensation finished (or nothing needed undoing). Terminal unless a late
    /// success of an abandoned step arrives and must be compensated.
    Failed,
}

impl SagaStatus {
    /// `STARTED`, `RUNNING`, `COMPLETED`, `COMPENSATING`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "STARTED",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Compensating => "COMPENSATING",
            Self::Failed => "FAILED",
        }
    }

    /// Parse the upper-case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "STARTED" => Self::Started,
            "RUNNING" => Self::Running,
            "COMPLETED" => Self::Completed,
            "COMPENSATING" => Self::Compensating,
            "FAILED" => Self::Failed,
            _ => return None,
        })
    }
}

impl std::str::FromStr for SagaStatus {
    type Err = UnknownName;

    /// The upper-case name ([`SagaStatus::parse`]).
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::parse(s).ok_or_else(|| UnknownName::new("saga status", s))
    }
}

/// A name that is not one of a closed set (a saga status, a command kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}")]
pub struct UnknownName {
    /// What was parsed (`saga status`, `command kind`).
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

impl UnknownName {
    fn new(what: &'static str, name: &str) -> Self {
        Self {
            what,
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not dispatched.
    NotStarted,
    /// Action dispatched, reply awaited.
    Awaiting,
    /// Action succeeded.
    Succeeded,
    /// Action failed (nothing to undo).
    Failed,
    /// No reply in time (or aborted) and not compensated yet: outcome unknown; a late
    /// success triggers the compensation.
    Abandoned,
    /// Compensation dispatched, reply awaited.
    Compensating,
    /// Compensation succeeded.
    Compensated,
}

/// The mutable part of a saga instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// Overall status.
    pub status: SagaStatus,
    /// One entry per step of the definition.
    pub steps: Vec<StepStatus>,
    /// Why the saga is compensating / failed.
    pub failure_reason: Option<String>,
}

impl SagaState {
    /// The initial state for `def`.
    pub fn new(def: &SagaDefinition) -> Self {
        Self {
            status: SagaStatus::Started,
            steps: vec![StepStatus::NotStarted; def.steps().len()],
            failure_reason: None,
        }
    }

    /// The step whose action is awaited, if any (the first, when the members of a
    /// parallel group are awaited).
    pub fn awaiting_step(&self) -> Option<usize> {
        self.steps.iter().position(|s| *s == StepStatus::Awaiting)
    }

    /// The label for users: `STARTED`, the awaited step's pending label (e.g.
    /// `PAYMENT_PENDING`; of the first awaited member of a parallel group),
    /// `COMPLETED`, `COMPENSATING` or `FAILED`.
    pub fn label(&self, def: &SagaDefinition) -> String {
        match (self.status, self.awaiting_step()) {
            (SagaStatus::Running, Some(i)) => def.steps()[i].pending_state.clone(),
            (status, _) => status.as_str().to_owned(),
        }
    }

    /// Whether nothing more will happen (COMPLETED, or FAILED with no abandoned step
    /// that a late reply could still revive).
    pub fn is_terminal(&self) -> bool {
        match self.status {
            SagaStatus::Completed => true,
            SagaStatus::Failed => !self.steps.contains(&StepStatus::Abandoned),
            _ => false,
        }
    }
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SagaEvent {
    /// Begin: dispatch the first step.
    Start,
    /// Step `step`'s action succeeded.
    StepSucceeded {
        /// Step index.
        step: usize,
    },
    /// Step `step`'s action failed (a business refusal, e.g. insufficient funds).
    StepFailed {
        /// Step index.
        step: usize,
        /// Why.
        reason: String,
    },
    /// The deadline of the command sent for step `step` passed without a reply.
    DeadlineExpired {
        /// Step index.
        step: usize,
    },
    /// Step `step`'s compensation succeeded.
    CompensationSucceeded {
        /// Step index.
        step: usize,
    },
    /// Step `step`'s compensation failed; it will be sent again.
    CompensationFailed {
        /// Step index.
        step: usize,
        /// Why.
        reason: String,
    },
    /// Stop a running saga and compensate (e.g. the user cancelled a pending order).
    Abort {
        /// Why.
        reason: String,
    },
}

impl SagaEvent {
    /// The event's name in `snake_case` (`start`, `step_succeeded`, …), for spans and logs.
    ///
    /// ```
    /// assert_eq!(saga_core::SagaEvent::StepSucceeded { step: 0 }.name(), "step_succeeded");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::StepSucceeded { .. } => "step_succeeded",
            Self::StepFailed { .. } => "step_failed",
            Self::DeadlineExpired { .. } => "deadline_expired",
            Self::CompensationSucceeded { .. } => "compensation_succeeded",
            Self::CompensationFailed { .. } => "compensation_failed",
            Self::Abort { .. } => "abort",
        }
    }
}

/// Which command of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// The step's action.
    Action,
    /// The step's compensation.
    Compensation,
}

impl CommandKind {
    /// `action` / `compensation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Action => "action",
            Self::Compensation => "compensation",
        }
    }
}

impl std::str::FromStr for CommandKind {
    type Err = UnknownName;

    /// `action` or `compensation` ([`CommandKind::as_str`] back).
    ///
    /// ```
    /// use saga_core::CommandKind;
    /// assert_eq!("compensation".parse(), Ok(CommandKind::Compensation));
    /// assert!("undo".parse::<CommandKind>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "action" => Ok(Self::Action),
            "compensation" => Ok(Self::Compensation),
            other => Err(UnknownName::new("command kind", other)),
        }
    }
}

/// A command the state machine asks to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCommand {
    /// Step index.
    pub step: usize,
    /// Action or compensation.
    pub kind: CommandKind,
    /// The command name from the definition (`payment.debit`).
    pub name: String,
}

/// Result of a transition that changed something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub state: SagaState,
    /// Commands to send, in order.
    pub commands: Vec<StepCommand>,
}

/// Why an event changed nothing (a duplicate, an out-of-order or a stale reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event ignored: {0}")]
pub struct Ignored(pub String);

fn ignored(state: &SagaState, event: &SagaEvent) -> Ignored {
    Ignored(format!(
        "{event:?} in {:?} with steps {:?}",
        state.status, state.steps
    ))
}

/// Apply `event` to `state`. Pure: the same inputs always give the same output.
///
/// Rules in short: steps run in order (the members of a
/// [`parallel`](crate::SagaDefinitionBuilder::parallel) group side by side, the next stage
/// once all succeeded); a failure (or a missed deadline, or an abort) abandons the steps
/// still awaited and compensates the succeeded steps in reverse order, one stage at a
/// time (a group's members at once), and ends FAILED; a
/// missed deadline of a step with a compensation compensates that step too (its
/// outcome is unknown); a success that arrives after its step was given up triggers
/// that step's compensation; a failed or timed-out compensation is sent again;
/// duplicates, stale and out-of-order replies are [`Ignored`].
///
/// ```
/// use saga_core::{transition, SagaDefinition, SagaEvent, SagaState, SagaStatus, Step};
///
/// let def = SagaDefinition::new("s")
///     .step(Step::new("a").compensate_with("undo_a"))
///     .step(Step::new("b"))
///     .build().unwrap();
/// let s0 = SagaState::new(&def);
/// let t1 = transition(&def, &s0, &SagaEvent::Start).unwrap();
/// let t2 = transition(&def, &t1.state, &SagaEvent::StepSucceeded { step: 0 }).unwrap();
/// let t3 = transition(&def, &t2.state, &SagaEvent::StepFailed { step: 1, reason: "no".into() }).unwrap();
/// assert_eq!(t3.state.status, SagaStatus::Compensating);
/// assert_eq!(t3.commands[0].name, "undo_a");
/// // The same reply again changes nothing.
/// assert!(transition(&def, &t3.state, &SagaEvent::StepFailed { step: 1, reason: "no".into() }).is_err());
/// ```
pub fn transition(
    def: &SagaDefinition,
    state: &SagaState,
    event: &SagaEvent,
) -> Result<Transition, Ignored> {
    let n = def.steps().len();
    if state.steps.len() != n {
        return Err(Ignored(format!(
            "state has {} steps, definition `{}` has {n}",
            state.steps.len(),
            def.name()
        )));
    }
    let mut next = state.clone();
    let mut commands = Vec::new();
    let step_of = |e: &SagaEvent| match e {
        SagaEvent::StepSucceeded { step }
        | SagaEvent::StepFailed { step, .. }
        | SagaEvent::DeadlineExpired { step }
        | SagaEvent::CompensationSucceeded { step }
        | SagaEvent::CompensationFailed { step, .. } => Some(*step),
        _ => None,
    };
    if let Some(i) = step_of(event) {
        if i >= n {
            return Err(ignored(state, event));
        }
    }
    use SagaStatus as S;
    use StepStatus as P;

    let changed = match event {
        SagaEvent::Start => {
            if state.status != S::Started {
                false
            } else {
                next.status = S::Running;
                dispatch_stage(def, &mut next, &mut commands, 0);
                true
            }
        }
        SagaEvent::StepSucceeded { step } => {
            let i = *step;
            match state.steps[i] {
                P::Awaiting if state.status == S::Running => {
                    next.steps[i] = P::Succeeded;
                    let stage = def.stage(i);
                    // The stage is done once every member is: then the next one, or the end.
                    if stage.clone().all(|j| next.steps[j] == P::Succeeded) {
                        if stage.end < n {
                            dispatch_stage(def, &mut next, &mut commands, stage.end);
                        } else {
                            next.status = S::Completed;
                        }
                    }
                    true
                }
                // A late success of a step we gave up on: undo it.
                P::Abandoned if def.steps()[i].compensation.is_some() => {
                    next.steps[i] = P::Compensating;
                    next.status = S::Compensating;
                    commands.push(compensation(def, i));
                    true
                }
                P::Abandoned => {
                    // Nothing can undo it; record that it did happen.
                    next.steps[i] = P::Succeeded;
                    true
                }
                _ => false,
            }
        }
        SagaEvent::StepFailed { step, reason } => {
            let i = *step;
            match state.steps[i] {
                P::Awaiting if state.status == S::Running => {
                    next.steps[i] = P::Failed;
                    abandon_awaited(&mut next);
                    begin_compensation(def, &mut next, &mut commands, reason.clone());
                    true
                }
                P::Abandoned => {
                    next.steps[i] = P::Failed;
                    true
                }
                _ => false,
            }
        }
        SagaEvent::DeadlineExpired { step } => {
            let i = *step;
            match state.steps[i] {
                // A step that must happen: ask again (same idempotency key).
                P::Awaiting if state.status == S::Running && def.steps()[i].resend_on_timeout => {
                    commands.push(action(def, i));
                    true
                }
                P::Awaiting if state.status == S::Running => {
                    give_up(
                        def,
                        &mut next,
                        &mut commands,
                        i,
                        format!("step `{}` timed out", def.steps()[i].name),
                    );
                    true
                }
                // A compensation went unanswered: send it again.
                P::Compensating => {
                    commands.push(compensation(def, i));
                    true
                }
                _ => false,
            }
        }
        SagaEvent::CompensationSucceeded { step } => {
            let i = *step;
            if state.steps[i] == P::Compensating {
                next.steps[i] = P::Compensated;
                continue_compensation(def, &mut next, &mut commands);
                true
            } else {
                false
            }
        }
        SagaEvent::CompensationFailed { step, .. } => {
            let i = *step;
            if state.steps[i] == P::Compensating {
                commands.push(compensation(def, i));
                true
            } else {
                false
            }
        }
        SagaEvent::Abort { reason } => match state.status {
            S::Started => {
                next.status = S::Failed;
                next.failure_reason = Some(reason.clone());
                true
            }
            S::Running => {
                // Give up on every awaited step (a stage may await several).
                let awaited: Vec<usize> =
                    (0..n).filter(|&j| state.steps[j] == P::Awaiting).collect();
                for &j in &awaited {
                    stop_awaiting(def, &mut next, &mut commands, j);
                }
                begin_compensation(def, &mut next, &mut commands, reason.clone());
                true
            }
            _ => false,
        },
    };
    if changed {
        Ok(Transition {
            state: next,
            commands,
        })
    } else {
        Err(ignored(state, event))
    }
}

fn action(def: &SagaDefinition, i: usize) -> StepCommand {
    StepCommand {
        step: i,
        kind: CommandKind::Action,
        name: def.steps()[i].action.clone(),
    }
}

fn compensation(def: &SagaDefinition, i: usize) -> StepCommand {
    StepCommand {
        step: i,
        kind: CommandKind::Compensation,
        name: def.steps()[i]
            .compensation
            .clone()
            .expect("compensation() is only called for compensable steps"),
    }
}

/// Send the actions of the stage that starts at step `first`.
fn dispatch_stage(
    def: &SagaDefinition,
    next: &mut SagaState,
    commands: &mut Vec<StepCommand>,
    first: usize,
) {
    for j in def.stage(first) {
        next.steps[j] = StepStatus::Awaiting;
        commands.push(action(def, j));
    }
}

/// The awaited step `i` will not be waited for any longer (its time ran out, or the saga
/// is aborted): compensated at once if it has a compensation and
/// `compensate_on_timeout`, abandoned otherwise.
fn stop_awaiting(
    def: &SagaDefinition,
    next: &mut SagaState,
    commands: &mut Vec<StepCommand>,
    i: usize,
) {
    let step = &def.steps()[i];
    if step.compensation.is_some() && step.compensate_on_timeout {
        next.steps[i] = StepStatus::Compensating;
        commands.push(compensation(def, i));
    } else {
        next.steps[i] = StepStatus::Abandoned;
    }
}

/// The members of a stage still awaited when another one failed or timed out: not
/// waited for, and compensated only if their success arrives late.
fn abandon_awaited(next: &mut SagaState) {
    for st in &mut next.steps {
        if *st == StepStatus::Awaiting {
            *st = StepStatus::Abandoned;
        }
    }
}

/// The awaited step `i` timed out: stop awaiting it, abandon the other members of its
/// stage, compensate.
fn give_up(
    def: &SagaDefinition,
    next: &mut SagaState,
    commands: &mut Vec<StepCommand>,
    i: usize,
    reason: String,
) {
    stop_awaiting(def, next, commands, i);
    abandon_awaited(next);
    begin_compensation(def, next, commands, reason);
}

fn begin_compensation(
    def: &SagaDefinition,
    next: &mut SagaState,
    commands: &mut Vec<StepCommand>,
    reason: String,
) {
    next.status = SagaStatus::Compensating;
    next.failure_reason = Some(reason);
    continue_compensation(def, next, commands);
}

/// Compensate the latest stage with succeeded steps to undo — all of its succeeded
/// members at once —, one stage at a time; FAILED when none is left.
fn continue_compensation(
    def: &SagaDefinition,
    next: &mut SagaState,
    commands: &mut Vec<StepCommand>,
) {
    if next.steps.contains(&StepStatus::Compensating) {
        next.status = SagaStatus::Compensating;
        return;
    }
    let undoable = |next: &SagaState, j: usize| {
        next.steps[j] == StepStatus::Succeeded && def.steps()[j].compensation.is_some()
    };
    let candidate = (0..next.steps.len()).rev().find(|&j| undoable(next, j));
    match candidate {
        Some(latest) => {
            for j in def.stage(latest) {
                if undoable(next, j) {
                    next.steps[j] = StepStatus::Compensating;
                    commands.push(compensation(def, j));
                }
            }
            next.status = SagaStatus::Compensating;
        }
        None => next.status = SagaStatus::Failed,
    }
}

#[cfg(test)]
mod parallel_tests;
#[cfg(test)]
mod tests;
