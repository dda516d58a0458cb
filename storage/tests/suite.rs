//! openraft's storage conformance suite against our sled log store and
//! state machine, each case on a fresh database in its own temp dir.

use catga_storage::{LogStore, StateMachine, StorageConfig, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

/// Builds stores that sync appends inline (`true`) or on the flush thread.
struct Builder(bool);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = StorageConfig { log_sync_inline: self.0, ..StorageConfig::default() };
        let (log, sm) = catga_storage::open(dir.path(), &cfg).expect("open sled");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_flush_thread() {
    Suite::test_all(Builder(false)).expect("suite");
}

#[test]
fn openraft_storage_suite_inline_sync() {
    Suite::test_all(Builder(true)).expect("suite");
}
