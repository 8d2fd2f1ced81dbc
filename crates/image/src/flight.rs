//! Single flight: concurrent requests for the same key share one piece of work. The work runs
//! in its own task, so a caller that gives up (an HTTP client hanging up) does not cancel it
//! for the others.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::{BoxFuture, FutureExt, Shared};

use crate::ImageError;

pub(crate) type Outcome<T> = Result<T, Arc<ImageError>>;
type Flight<T> = Shared<BoxFuture<'static, Outcome<T>>>;

pub(crate) struct Flights<T> {
    running: Arc<Mutex<HashMap<String, Flight<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    pub fn new() -> Self {
        Flights {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Joins the flight for `key`, starting it with `work` if none is running. Must be called
    /// within a tokio runtime.
    pub async fn join<F, Fut>(&self, key: &str, work: F) -> Result<T, ImageError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ImageError>> + Send + 'static,
    {
        let flight = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            match running.get(key) {
                Some(f) => f.clone(),
                None => {
                    let fut = work();
                    let registry = Arc::clone(&self.running);
                    let k = key.to_string();
                    // The task removes its own entry when done; it cannot run before we insert
                    // it below, since that needs the lock we hold.
                    let task = tokio::spawn(async move {
                        let out = fut.await.map_err(Arc::new);
                        registry
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&k);
                        out
                    });
                    let flight: Flight<T> = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Arc::new(ImageError::io(
                                "an image task failed",
                                io::Error::other(e.to_string()),
                            )))
                        })
                    }
                    .boxed()
                    .shared();
                    running.insert(key.to_string(), flight.clone());
                    flight
                }
            }
        };
        flight.await.map_err(|e| e.duplicate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_joins_share_one_run_and_later_ones_start_afresh() {
        let flights: Flights<usize> = Flights::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut joins: Vec<_> = (0..20)
            .map(|_| {
                let (runs, gate) = (runs.clone(), gate.clone());
                Box::pin(flights.join("k", move || async move {
                    let _permit = gate.acquire().await;
                    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
                }))
            })
            .collect();
        // One poll each registers all 20 while the work is held at the gate.
        for j in &mut joins {
            assert!(futures::poll!(j).is_pending());
        }
        gate.add_permits(1);
        for j in joins {
            assert_eq!(j.await.unwrap(), 1);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(
            flights.running.lock().unwrap().is_empty(),
            "finished flights are forgotten"
        );
        let again = flights.join("k", || async { Ok(42) }).await.unwrap();
        assert_eq!(again, 42);
    }

    #[tokio::test]
    async fn errors_reach_every_waiter() {
        let flights: Flights<()> = Flights::new();
        let err = flights
            .join("x", || async {
                Err(ImageError::InvalidImage("bad layer".into()))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::InvalidImage(m) if m == "bad layer"));
    }
}
