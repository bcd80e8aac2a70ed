//! Saga definitions: ordered steps (alone or in groups run side by side), each with an
//! action and an optional compensation.

use std::time::Duration;

use crate::{Error, Result};

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Step name, unique in its saga (`payment`).
    pub name: String,
    /// Name of the command that performs the step (`payment.debit`).
    pub action: String,
    /// Name of the command that undoes it (`payment.refund`), if it can be undone.
    pub compensation: Option<String>,
    /// How long to wait for the step's reply before giving up on it (and, for a
    /// compensation, before sending it again). `None`: wait forever.
    pub deadline: Option<Duration>,
    /// When the step's reply does not come in time and the step has a compensation,
    /// send the compensation at once (the default): the participant may have acted and
    /// the reply got lost. Participants must then accept a compensation that arrives
    /// before, or without, its action. When `false` the step is only compensated if a
    /// late success reply arrives.
    pub compensate_on_timeout: bool,
    /// When the step's reply does not come in time, send the action again instead of
    /// giving up (for steps that must happen, like a refund, and whose participant
    /// applies a command at most once per idempotency key).
    pub resend_on_timeout: bool,
    /// The saga state shown while this step is awaited (`PAYMENT_PENDING`).
    pub pending_state: String,
}

impl Step {
    /// A step named `name` whose action command is also `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            pending_state: format!("{}_PENDING", name.to_uppercase()),
            action: name.clone(),
            name,
            compensation: None,
            deadline: None,
            compensate_on_timeout: true,
            resend_on_timeout: false,
        }
    }

    /// Use `command` as the action's command name.
    pub fn action(mut self, command: impl Into<String>) -> Self {
        self.action = command.into();
        self
    }

    /// Undo the step with `command`.
    pub fn compensate_with(mut self, command: impl Into<String>) -> Self {
        self.compensation = Some(command.into());
        self
    }

    /// Give up on (or resend) the step after `d` without a reply.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// See [`Step::compensate_on_timeout`].
    pub fn compensate_on_timeout(mut self, yes: bool) -> Self {
        self.compensate_on_timeout = yes;
        self
    }

    /// See [`Step::resend_on_timeout`].
    pub fn resend_on_timeout(mut self, yes: bool) -> Self {
        self.resend_on_timeout = yes;
        self
    }

    /// The state label shown while the step is awaited.
    pub fn pending_state(mut self, label: impl Into<String>) -> Self {
        self.pending_state = label.into();
        self
    }
}

/// An ordered list of steps under a saga type name.
///
/// The order-creation saga of ordersys:
///
/// ```
/// use std::time::Duration;
/// use saga_core::{SagaDefinition, Step};
///
/// let create_order = SagaDefinition::new("create_order")
///     .step(Step::new("create_order").compensate_with("cancel_order"))
///     .step(Step::new("payment").action("payment.debit").compensate_with("payment.refund")
///         .deadline(Duration::from_secs(30)))
///     .step(Step::new("confirm_order"))
///     .build()
///     .unwrap();
/// assert_eq!(create_order.steps()[1].pending_state, "PAYMENT_PENDING");
/// ```
///
/// Steps can also run side by side: [`parallel`](SagaDefinitionBuilder::parallel)
/// dispatches a group of steps together and goes on once every member succeeded.
///
/// ```
/// use std::time::Duration;
/// use saga_core::{SagaDefinition, Step};
///
/// let trip = SagaDefinition::new("trip")
///     .parallel([
///         Step::new("flight").compensate_with("flight.cancel").deadline(Duration::from_secs(20)),
///         Step::new("hotel").compensate_with("hotel.cancel").deadline(Duration::from_secs(10)),
///     ])
///     .step(Step::new("charge").compensate_with("refund"))
///     .build()
///     .unwrap();
/// assert_eq!(trip.stage(1), 0..2, "hotel runs beside the flight");
/// assert_eq!(trip.stage(2), 2..3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaDefinition {
    name: String,
    version: u32,
    steps: Vec<Step>,
    /// Per step, the index of its stage (steps of one stage run side by side).
    stages: Vec<usize>,
}

impl SagaDefinition {
    /// Start a definition for saga type `name`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(name: impl Into<String>) -> SagaDefinitionBuilder {
        SagaDefinitionBuilder {
            name: name.into(),
            version: 1,
            steps: Vec::new(),
            stages: Vec::new(),
            empty_group: false,
        }
    }

    /// The saga type name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition's version (1 unless [`SagaDefinitionBuilder::version`] says
    /// otherwise). Each instance records the version it was started with and is driven
    /// by that version to its end: see [`Orchestrator::register`](crate::Orchestrator::register).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The steps, in execution order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The index of the step named `name` — what [`SagaEvent`](crate::SagaEvent)s carry —,
    /// for code that knows steps by name.
    ///
    /// ```
    /// use saga_core::{SagaDefinition, SagaEvent, Step};
    /// let def = SagaDefinition::new("create_order")
    ///     .step(Step::new("create_order"))
    ///     .step(Step::new("payment").action("payment.debit"))
    ///     .build()
    ///     .unwrap();
    /// let payment = def.step_index("payment").unwrap();
    /// assert_eq!(payment, 1);
    /// let _event = SagaEvent::StepSucceeded { step: payment };
    /// assert_eq!(def.step_index("shipping"), None);
    /// ```
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// The steps dispatched together with step `step` (its stage): `step..step + 1` for a
    /// step of its own, the whole group for a member of a
    /// [`parallel`](SagaDefinitionBuilder::parallel) group. Panics if `step` is out of
    /// range.
    pub fn stage(&self, step: usize) -> std::ops::Range<usize> {
        let stage = self.stages[step];
        let start = self.stages.partition_point(|s| *s < stage);
        let end = self.stages.partition_point(|s| *s <= stage);
        start..end
    }

    /// Whether some steps run side by side.
    pub fn has_parallel_steps(&self) -> bool {
        self.stages.windows(2).any(|w| w[0] == w[1])
    }
}

/// Builder returned by [`SagaDefinition::new`].
#[derive(Debug, Clone)]
pub struct SagaDefinitionBuilder {
    name: String,
    version: u32,
    steps: Vec<Step>,
    stages: Vec<usize>,
    empty_group: bool,
}

impl SagaDefinitionBuilder {
    /// The definition's version (default 1; at least 1). Change it whenever a deploy
    /// changes the steps of a saga that may be running: instances started on the old
    /// version finish on it as long as the orchestrator still has it registered.
    ///
    /// ```
    /// use saga_core::{SagaDefinition, Step};
    /// let v2 = SagaDefinition::new("create_order")
    ///     .version(2)
    ///     .step(Step::new("create_order"))
    ///     .step(Step::new("fraud_check"))
    ///     .step(Step::new("payment"))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(v2.version(), 2);
    /// ```
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Append a step, run after the steps before it.
    pub fn step(self, step: Step) -> Self {
        self.parallel([step])
    }

    /// Append a group of steps run side by side, after the steps before it: their
    /// actions are sent together, each with its own deadline, and the saga goes on once
    /// **every** member succeeded.
    ///
    /// When a member fails (or gets no reply in time, or the saga is aborted) the saga
    /// compensates: members still awaited are *abandoned* — not waited for, and
    /// compensated if a success arrives late (a member that timed out and has
    /// `compensate_on_timeout` is compensated at once, as a step of its own would be) —
    /// and the members that succeeded are compensated **all at once**, then the
    /// stages before, latest first. Duplicate and out-of-order replies change nothing.
    /// A group of one is a plain step; an empty group is refused by
    /// [`build`](Self::build).
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        let stage = self.stages.last().map_or(0, |s| s + 1);
        let before = self.steps.len();
        for step in steps {
            self.steps.push(step);
            self.stages.push(stage);
        }
        self.empty_group |= self.steps.len() == before;
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<SagaDefinition> {
        if self.name.is_empty() {
            return Err(Error::InvalidDefinition("empty saga name".into()));
        }
        if self.steps.is_empty() {
            return Err(Error::InvalidDefinition(
                "a saga needs at least one step".into(),
            ));
        }
        if self.version == 0 {
            return Err(Error::InvalidDefinition("versions start at 1".into()));
        }
        if self.empty_group {
            return Err(Error::InvalidDefinition("an empty parallel group".into()));
        }
        for (i, s) in self.steps.iter().enumerate() {
            if self.steps[..i].iter().any(|o| o.name == s.name) {
                return Err(Error::InvalidDefinition(format!(
                    "duplicate step `{}`",
                    s.name
                )));
            }
        }
        Ok(SagaDefinition {
            name: self.name,
            version: self.version,
            steps: self.steps,
            stages: self.stages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_is_built_as_written() {
        let s = Step::new("payment");
        assert_eq!(
            (
                s.action.as_str(),
                s.pending_state.as_str(),
                s.compensation.as_deref()
            ),
            ("payment", "PAYMENT_PENDING", None)
        );
        assert!(s.compensate_on_timeout && !s.resend_on_timeout);
        assert_eq!(s.deadline, None);
        let s = s
            .action("payment.debit")
            .compensate_with("payment.refund")
            .deadline(Duration::from_secs(9))
            .compensate_on_timeout(false)
            .resend_on_timeout(true)
            .pending_state("PAYING");
        assert_eq!(s.name, "payment");
        assert_eq!(s.action, "payment.debit");
        assert_eq!(s.compensation.as_deref(), Some("payment.refund"));
        assert_eq!(s.deadline, Some(Duration::from_secs(9)));
        assert!(!s.compensate_on_timeout && s.resend_on_timeout);
        assert_eq!(s.pending_state, "PAYING");
    }

    #[test]
    fn a_definition_names_its_steps_in_order_and_refuses_nonsense() {
        let def = SagaDefinition::new("trip")
            .step(Step::new("flight"))
            .step(Step::new("hotel"))
            .build()
            .unwrap();
        assert_eq!(def.name(), "trip");
        assert_eq!(
            def.steps()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["flight", "hotel"]
        );
        assert_eq!(def.step_index("flight"), Some(0));
        assert_eq!(def.step_index("hotel"), Some(1));
        assert_eq!(def.step_index("car"), None);

        let invalid = |b: SagaDefinitionBuilder| match b.build() {
            Err(Error::InvalidDefinition(why)) => why,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            invalid(SagaDefinition::new("").step(Step::new("a"))),
            "empty saga name"
        );
        assert_eq!(
            invalid(SagaDefinition::new("x")),
            "a saga needs at least one step"
        );
        assert_eq!(
            invalid(
                SagaDefinition::new("x")
                    .step(Step::new("a"))
                    .step(Step::new("b"))
                    .step(Step::new("a"))
            ),
            "duplicate step `a`"
        );
        assert_eq!(
            invalid(SagaDefinition::new("x").version(0).step(Step::new("a"))),
            "versions start at 1"
        );
        assert_eq!(
            invalid(SagaDefinition::new("x").step(Step::new("a")).parallel([])),
            "an empty parallel group"
        );
        assert_eq!(
            invalid(
                SagaDefinition::new("x")
                    .parallel([Step::new("a"), Step::new("b")])
                    .parallel([Step::new("a")])
            ),
            "duplicate step `a`"
        );
    }

    #[test]
    fn parallel_groups_are_stages_of_their_own() {
        let def = SagaDefinition::new("trip")
            .step(Step::new("quote"))
            .parallel([Step::new("flight"), Step::new("hotel"), Step::new("car")])
            .step(Step::new("charge"))
            .parallel([Step::new("mail")])
            .build()
            .unwrap();
        let stages: Vec<_> = (0..def.steps().len()).map(|i| def.stage(i)).collect();
        assert_eq!(stages, [0..1, 1..4, 1..4, 1..4, 4..5, 5..6]);
        assert!(def.has_parallel_steps());
        let plain = SagaDefinition::new("s")
            .step(Step::new("a"))
            .parallel([Step::new("b")])
            .build()
            .unwrap();
        assert!(!plain.has_parallel_steps());
        assert_eq!((plain.stage(0), plain.stage(1)), (0..1, 1..2));
    }
}
