//! Keeps work for different platforms from overlapping where the engine's image store is shared.
//!
//! Docker Engine keeps one image per tag. When a linux/amd64 build and a linux/arm64 build both
//! start `FROM base/busybox:latest`, pulling the arm64 variant re-points the tag, and the classic
//! builder of the other build may resolve `FROM` to the wrong architecture without any error.
//! The gate lets any number of holders for the same platform in at once, and makes a different
//! platform wait until they are all done. Builds hold it for their whole duration (the builder
//! resolves `FROM` when it starts); container steps hold it only while their image is pulled.

use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct PlatformGate {
    /// The platform inside the gate and how many holders it has.
    inside: Mutex<Option<(String, usize)>>,
    released: Notify,
}

/// Held while work for one platform is inside the gate; leaving is dropping it.
pub struct GatePass<'a> {
    gate: &'a PlatformGate,
}

impl PlatformGate {
    /// Waits until no work for another platform is inside, then enters.
    pub async fn enter(&self, platform: &str) -> GatePass<'_> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut inside = self.inside.lock().unwrap_or_else(|p| p.into_inner());
                match inside.as_mut() {
                    None => {
                        *inside = Some((platform.to_string(), 1));
                        return GatePass { gate: self };
                    }
                    Some((current, holders)) if current == platform => {
                        *holders += 1;
                        return GatePass { gate: self };
                    }
                    Some(_) => {}
                }
            }
            released.await;
        }
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut inside = self.gate.inside.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, holders)) = inside.as_mut() {
            *holders -= 1;
            if *holders == 0 {
                *inside = None;
                self.gate.released.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn same_platform_shares_and_another_platform_waits() {
        let gate = Arc::new(PlatformGate::default());
        let first = gate.enter("linux/amd64").await;
        let second = gate.enter("linux/amd64").await;
        let waiting = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _pass = gate.enter("linux/arm64").await;
            })
        };
        drop(first);
        // The arm64 holder cannot be inside while an amd64 pass is still held.
        assert!(tokio::time::timeout(Duration::from_millis(100), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err());
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the arm64 holder enters once amd64 is done")
            .expect("no panic");
        let _again = gate.enter("linux/386").await;
    }
}
