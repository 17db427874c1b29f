//! The step dependency graph: which steps may start, as a pure type.

use std::collections::HashMap;

use crate::task::Step;

/// Where one step is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepState {
    Pending,
    Running,
    Done { ok: bool },
}

/// The plan's steps by index with their dependencies: a step may start once every step it
/// depends on has ended well. A dependency on an unknown id is no constraint (the task-file
/// engine rejects those before a plan exists).
#[derive(Debug, Clone)]
pub(super) struct StepGraph {
    deps: Vec<Vec<usize>>,
    states: Vec<StepState>,
}

impl StepGraph {
    pub(super) fn new(steps: &[Step]) -> StepGraph {
        let index: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let deps = steps
            .iter()
            .map(|step| {
                step.depends_on
                    .iter()
                    .filter_map(|dep| index.get(dep.as_str()).copied())
                    .collect()
            })
            .collect();
        StepGraph {
            deps,
            states: vec![StepState::Pending; steps.len()],
        }
    }

    /// Pending steps whose dependencies all succeeded, in plan order.
    pub(super) fn ready(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == StepState::Pending)
            .filter(|&i| {
                self.deps[i]
                    .iter()
                    .all(|&d| self.states[d] == StepState::Done { ok: true })
            })
            .collect()
    }

    pub(super) fn start(&mut self, i: usize) {
        if let Some(state) = self.states.get_mut(i) {
            *state = StepState::Running;
        }
    }

    pub(super) fn finish(&mut self, i: usize, ok: bool) {
        if let Some(state) = self.states.get_mut(i) {
            *state = StepState::Done { ok };
        }
    }

    /// Steps that never started, in plan order.
    pub(super) fn pending(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == StepState::Pending)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: &str, deps: &[&str]) -> Step {
        Step {
            id: id.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn steps_become_ready_when_their_dependencies_succeed() {
        let steps = [
            step("a", &[]),
            step("b", &["a"]),
            step("c", &[]),
            step("d", &["b", "c"]),
        ];
        let mut graph = StepGraph::new(&steps);
        assert_eq!(graph.ready(), vec![0, 2]);
        graph.start(0);
        graph.start(2);
        assert!(graph.ready().is_empty());
        graph.finish(0, true);
        assert_eq!(graph.ready(), vec![1]);
        graph.start(1);
        graph.finish(1, true);
        assert!(graph.ready().is_empty(), "d still waits for c");
        graph.finish(2, true);
        assert_eq!(graph.ready(), vec![3]);
    }

    #[test]
    fn failed_dependencies_leave_dependents_pending() {
        let steps = [step("a", &[]), step("b", &["a"]), step("c", &["zz"])];
        let mut graph = StepGraph::new(&steps);
        assert_eq!(graph.ready(), vec![0, 2], "unknown ids are no constraint");
        graph.start(0);
        graph.finish(0, false);
        graph.start(2);
        assert!(graph.ready().is_empty());
        assert_eq!(graph.pending(), vec![1]);
        graph.finish(99, true);
        graph.start(99);
    }
}
