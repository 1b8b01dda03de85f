//! Deployments in their soak, by service, so an operator's rollback can end one
//! early: nginx then switches back in one reload to the colour still running.

use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Soaks(std::sync::Mutex<HashMap<String, Soak>>);

struct Soak {
    deployment: i64,
    stop: CancellationToken,
    rollback: bool,
}

impl Soaks {
    /// The soak of `deployment` begins. The guard wakes it early on a rollback
    /// request and ends it when dropped, even if the soak is cut off.
    pub fn open(&self, service: &str, deployment: i64) -> SoakGuard<'_> {
        let stop = CancellationToken::new();
        self.0.lock().unwrap().insert(
            service.to_string(),
            Soak {
                deployment,
                stop: stop.clone(),
                rollback: false,
            },
        );
        SoakGuard {
            soaks: self,
            service: service.to_string(),
            stop,
        }
    }

    /// Asks the soaking deployment of `service`, if any, to roll back.
    pub fn rollback(&self, service: &str) -> Option<i64> {
        let mut soaks = self.0.lock().unwrap();
        let soak = soaks.get_mut(service)?;
        soak.rollback = true;
        soak.stop.cancel();
        Some(soak.deployment)
    }
}

pub struct SoakGuard<'a> {
    soaks: &'a Soaks,
    service: String,
    pub stop: CancellationToken,
}

impl SoakGuard<'_> {
    /// The soak ended; returns whether a rollback was asked for meanwhile.
    pub fn close(self) -> bool {
        self.soaks
            .0
            .lock()
            .unwrap()
            .get(&self.service)
            .is_some_and(|s| s.rollback)
        // (the entry goes with the guard)
    }
}

impl Drop for SoakGuard<'_> {
    fn drop(&mut self) {
        self.soaks.0.lock().unwrap().remove(&self.service);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rollback_reaches_only_the_deployment_still_soaking() {
        let soaks = super::Soaks::default();
        assert_eq!(soaks.rollback("web"), None, "nothing soaks yet");
        let guard = soaks.open("web", 7);
        assert_eq!(soaks.rollback("api"), None, "another service");
        assert_eq!(soaks.rollback("web"), Some(7));
        assert!(guard.close(), "the soak learns of the request");
        assert_eq!(soaks.rollback("web"), None, "closed");
        // A soak cut off (its future dropped) leaves nothing behind either.
        drop(soaks.open("web", 8));
        assert_eq!(soaks.rollback("web"), None);
        let quiet = soaks.open("web", 9);
        assert!(!quiet.close(), "no request, no rollback");
    }
}
