//! Saga definitions drawn as Mermaid flowcharts, optionally marking where an instance
//! stands.

use std::fmt::Write as _;

use crate::{SagaDefinition, SagaState, SagaStatus, StepStatus};

impl SagaDefinition {
    /// The definition as a [Mermaid](https://mermaid.js.org) flowchart: each step with
    /// its command (and deadline), the path forward to `COMPLETED` (the members of a
    /// parallel group side by side, joined at an `all ok` node), and the path back when
    /// a step fails or gets no reply in time — the compensations of its group's other
    /// members, then of the stages before it, latest first, to `FAILED`. GitHub, GitLab and most Markdown viewers draw it
    /// from a ` ```mermaid ` block.
    ///
    /// ```
    /// use std::time::Duration;
    /// use saga_core::{SagaDefinition, Step};
    ///
    /// let trip = SagaDefinition::new("trip")
    ///     .step(Step::new("flight").compensate_with("flight.cancel"))
    ///     .step(Step::new("charge").deadline(Duration::from_secs(30)))
    ///     .build()
    ///     .unwrap();
    /// let chart = trip.to_mermaid();
    /// assert!(chart.starts_with("flowchart TD\n"));
    /// assert!(chart.contains(r#"s0 -->|ok| s1"#));
    /// assert!(chart.contains(r#"s1 -.->|failed| c0"#));
    /// ```
    pub fn to_mermaid(&self) -> String {
        self.render(None)
    }

    /// [`to_mermaid`](Self::to_mermaid) with an instance's `state` marked: steps done
    /// (`done`), the step or compensation awaited (`current`), failed or abandoned steps
    /// (`failed`), undone steps and their finished compensations (`undone`, `done`),
    /// and the end reached.
    ///
    /// ```
    /// use saga_core::{SagaDefinition, SagaState, StepStatus, SagaStatus, Step};
    ///
    /// let def = SagaDefinition::new("trip")
    ///     .step(Step::new("flight").compensate_with("flight.cancel"))
    ///     .step(Step::new("charge"))
    ///     .build()
    ///     .unwrap();
    /// let mut state = SagaState::new(&def);
    /// state.status = SagaStatus::Running;
    /// state.steps = vec![StepStatus::Succeeded, StepStatus::Awaiting];
    /// let chart = def.to_mermaid_at(&state);
    /// assert!(chart.contains("class s0 done"));
    /// assert!(chart.contains("class s1 current"));
    /// ```
    pub fn to_mermaid_at(&self, state: &SagaState) -> String {
        self.render(Some(state))
    }

    fn render(&self, at: Option<&SagaState>) -> String {
        let steps = self.steps();
        let mut out = String::from("flowchart TD\n");
        let mut line = |text: String| {
            out.push_str("    ");
            out.push_str(&text);
            out.push('\n');
        };
        line(format!("start([\"{}\"])", escape(self.name())));
        for (i, s) in steps.iter().enumerate() {
            let mut label = escape(&s.name);
            if s.action != s.name {
                let _ = write!(label, "<br/>{}", escape(&s.action));
            }
            if let Some(d) = s.deadline {
                let _ = write!(label, "<br/>deadline {}", seconds(d));
            }
            line(format!("s{i}[\"{label}\"]"));
            if let Some(c) = &s.compensation {
                line(format!(
                    "c{i}[/\"undo {}<br/>{}\"/]",
                    escape(&s.name),
                    escape(c)
                ));
            }
        }
        line("completed([\"COMPLETED\"])".into());
        line("failed([\"FAILED\"])".into());
        // The stages: one step, or the members of a parallel group (joined at `j{k}`).
        let mut stages: Vec<std::ops::Range<usize>> = Vec::new();
        for i in 0..steps.len() {
            if stages.last().is_none_or(|r| !r.contains(&i)) {
                stages.push(self.stage(i));
            }
        }
        let stage_of = |i: usize| stages.iter().position(|r| r.contains(&i)).unwrap_or(0);
        for (k, r) in stages.iter().enumerate() {
            if r.len() > 1 {
                line(format!("j{k}((\"all ok\"))"));
            }
        }
        let compensable = |j: usize| steps[j].compensation.is_some();
        // Where the way back goes once stage `k` is undone (or had nothing to undo): the
        // compensations of the latest earlier stage with compensable steps, or the end.
        let undo_before_stage = |k: usize| -> Vec<String> {
            (0..k)
                .rev()
                .map(|e| {
                    stages[e]
                        .clone()
                        .filter(|&j| compensable(j))
                        .collect::<Vec<_>>()
                })
                .find(|c| !c.is_empty())
                .map_or_else(
                    || vec!["failed".to_owned()],
                    |c| c.iter().map(|j| format!("c{j}")).collect(),
                )
        };
        // Where the way back starts when step `i` did not happen: the compensations of
        // its compensable group members, else of the stages before.
        let undo_after_failure = |i: usize| -> Vec<String> {
            let k = stage_of(i);
            let siblings: Vec<String> = stages[k]
                .clone()
                .filter(|&j| j != i && compensable(j))
                .map(|j| format!("c{j}"))
                .collect();
            if siblings.is_empty() {
                undo_before_stage(k)
            } else {
                siblings
            }
        };
        let entries = |k: usize| -> Vec<String> {
            stages.get(k).map_or_else(
                || vec!["completed".to_owned()],
                |r| r.clone().map(|j| format!("s{j}")).collect(),
            )
        };
        for e in entries(0) {
            line(format!("start --> {e}"));
        }
        for (i, s) in steps.iter().enumerate() {
            let k = stage_of(i);
            if stages[k].len() > 1 {
                line(format!("s{i} -->|ok| j{k}"));
                if i + 1 == stages[k].end {
                    for e in entries(k + 1) {
                        line(format!("j{k} --> {e}"));
                    }
                }
            } else {
                for e in entries(k + 1) {
                    line(format!("s{i} -->|ok| {e}"));
                }
            }
            for t in undo_after_failure(i) {
                line(format!("s{i} -.->|failed| {t}"));
            }
            if let Some(d) = s.deadline {
                let late = format!("no reply in {}", seconds(d));
                if s.resend_on_timeout {
                    line(format!("s{i} -.->|\"{late}: sent again\"| s{i}"));
                } else if compensable(i) && s.compensate_on_timeout {
                    line(format!("s{i} -.->|\"{late}\"| c{i}"));
                } else {
                    for t in undo_after_failure(i) {
                        line(format!("s{i} -.->|\"{late}\"| {t}"));
                    }
                }
            }
            if compensable(i) {
                for t in undo_before_stage(k) {
                    line(format!("c{i} -.->|undone| {t}"));
                }
                line(format!("c{i} -.->|\"failed: sent again\"| c{i}"));
            }
        }
        if let Some(state) = at {
            line("classDef done fill:#d4edda,stroke:#28a745".into());
            line("classDef current fill:#fff3cd,stroke:#e0a800,stroke-width:3px".into());
            line("classDef failed fill:#f8d7da,stroke:#dc3545".into());
            line("classDef undone fill:#e2e3e5,stroke:#6c757d".into());
            for (i, status) in state.steps.iter().enumerate().take(steps.len()) {
                let marks: &[(&str, &str)] = match status {
                    StepStatus::NotStarted => &[],
                    StepStatus::Awaiting => &[("s", "current")],
                    StepStatus::Succeeded => &[("s", "done")],
                    StepStatus::Failed | StepStatus::Abandoned => &[("s", "failed")],
                    // Done or given up: the compensation is what is awaited.
                    StepStatus::Compensating => &[("c", "current")],
                    StepStatus::Compensated => &[("s", "undone"), ("c", "done")],
                };
                for (node, class) in marks {
                    line(format!("class {node}{i} {class}"));
                }
            }
            match state.status {
                SagaStatus::Completed => line("class completed done".into()),
                SagaStatus::Failed => line("class failed failed".into()),
                _ => {}
            }
        }
        out
    }
}

/// A duration as Mermaid text: `30s`, `1.5s`.
fn seconds(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Text safe inside a quoted Mermaid label.
fn escape(text: &str) -> String {
    text.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{SagaDefinition, SagaState, SagaStatus, Step, StepStatus};

    fn create_order() -> SagaDefinition {
        crate::conformance::create_order_saga(true)
    }

    #[test]
    fn a_definition_is_drawn_forward_and_back() {
        assert_eq!(
            create_order().to_mermaid(),
            r#"flowchart TD
    start(["create_order"])
    s0["create_order"]
    c0[/"undo create_order<br/>cancel_order"/]
    s1["payment<br/>payment.debit<br/>deadline 30s"]
    c1[/"undo payment<br/>payment.refund"/]
    s2["confirm_order"]
    completed(["COMPLETED"])
    failed(["FAILED"])
    start --> s0
    s0 -->|ok| s1
    s0 -.->|failed| failed
    c0 -.->|undone| failed
    c0 -.->|"failed: sent again"| c0
    s1 -->|ok| s2
    s1 -.->|failed| c0
    s1 -.->|"no reply in 30s"| c1
    c1 -.->|undone| c0
    c1 -.->|"failed: sent again"| c1
    s2 -->|ok| completed
    s2 -.->|failed| c1
"#
        );
    }

    #[test]
    fn timeouts_are_drawn_as_the_machine_handles_them() {
        let def = SagaDefinition::new("refund")
            .step(Step::new("hold").compensate_with("release"))
            .step(
                Step::new("refund")
                    .deadline(Duration::from_millis(1500))
                    .resend_on_timeout(true),
            )
            .step(
                Step::new("notify")
                    .compensate_with("retract")
                    .compensate_on_timeout(false)
                    .deadline(Duration::from_secs(5)),
            )
            .build()
            .unwrap();
        let chart = def.to_mermaid();
        assert!(
            chart.contains(r#"s1 -.->|"no reply in 1.5s: sent again"| s1"#),
            "{chart}"
        );
        // Not compensated on timeout: the way back starts before it.
        assert!(chart.contains(r#"s2 -.->|"no reply in 5s"| c0"#), "{chart}");
    }

    #[test]
    fn a_parallel_group_fans_out_and_joins() {
        let chart = crate::conformance::trip_saga().to_mermaid();
        for edge in [
            "start --> s0",
            "start --> s1",
            "s0 -->|ok| j0",
            "s1 -->|ok| j0",
            "j0 --> s2",
            "s2 -->|ok| completed",
            // A member failing undoes the other member; the group undone, the end.
            "s1 -.->|failed| c0",
            "s0 -.->|failed| c1",
            "c0 -.->|undone| failed",
            // The step after the group undoes both members at once.
            "s2 -.->|failed| c0",
            "s2 -.->|failed| c1",
            "c2 -.->|undone| c0",
            "c2 -.->|undone| c1",
        ] {
            assert!(chart.contains(&format!("    {edge}\n")), "{edge}: {chart}");
        }
        assert!(!chart.contains("s0 -->|ok| s1"), "{chart}");
    }

    #[test]
    fn an_instance_is_marked_where_it_stands() {
        let def = create_order();
        let mut state = SagaState::new(&def);
        assert!(!def.to_mermaid_at(&state).contains("\n    class "));
        state.status = SagaStatus::Compensating;
        state.steps = vec![
            StepStatus::Succeeded,
            StepStatus::Compensating,
            StepStatus::NotStarted,
        ];
        let chart = def.to_mermaid_at(&state);
        for mark in ["class s0 done", "class c1 current"] {
            assert!(chart.contains(mark), "{mark}: {chart}");
        }
        assert!(
            !chart.contains("class s1") && !chart.contains("class s2"),
            "{chart}"
        );
        state.status = SagaStatus::Failed;
        state.steps = vec![
            StepStatus::Compensated,
            StepStatus::Failed,
            StepStatus::NotStarted,
        ];
        let chart = def.to_mermaid_at(&state);
        for mark in [
            "class s0 undone",
            "class c0 done",
            "class s1 failed",
            "class failed failed",
        ] {
            assert!(chart.contains(mark), "{mark}: {chart}");
        }
    }

    #[test]
    fn labels_cannot_break_out_of_their_quotes() {
        let def = SagaDefinition::new(r#"a"]; click x"#)
            .step(Step::new("<b>"))
            .build()
            .unwrap();
        let chart = def.to_mermaid();
        assert!(chart.contains(r#"start(["a#quot;]; click x"])"#), "{chart}");
        assert!(chart.contains(r##"s0["#lt;b#gt;"]"##), "{chart}");
    }
}
