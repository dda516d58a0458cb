//! openraft's storage conformance suite against our sled log store and
//! state machine, each case on a fresh database in its own temp dir.

use catga_storage::{LogStore, StateMachine, StorageConfig, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = catga_storage::open(dir.path(), &StorageConfig::default()).expect("open sled");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("suite");
}
