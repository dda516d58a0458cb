//! openraft's storage conformance suite against our sled log store and
//! state machine, each case on a fresh database in its own temp dir.

use catga_storage::{LogStore, StateMachine, StorageConfig, TypeConfig};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).expect("open sled");
        Ok((dir, log, sm))
    }
}

/// On a one-worker runtime, as a node with `worker_threads = 1` runs:
/// the log's syncs happen off the runtime, so nothing waits on a blocked
/// worker.
#[tokio::test(flavor = "current_thread")]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("suite");
}
