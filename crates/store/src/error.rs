use hangar_types::MachineState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The machine was not in the state the change expected (someone else changed it first).
    #[error("machine is {current}, not {expected}")]
    StateChanged {
        expected: MachineState,
        current: MachineState,
    },
    /// The transition table forbids the change.
    #[error("a machine cannot go from {from} to {to}")]
    Forbidden {
        from: MachineState,
        to: MachineState,
    },
    /// The machine's version is not the one the caller expected.
    #[error("machine version is {current}, not {expected}")]
    StaleVersion { expected: String, current: String },
    /// Someone else holds the machine's lease.
    #[error("lease currently held by {owner} until {expires_at_ms}")]
    LeaseHeld { owner: String, expires_at_ms: i64 },
    /// A [`Reservation`](crate::Reservation) found too little memory left on the host.
    #[error("insufficient memory available to fulfill request: {wanted_mb} MB wanted, {free_mb} of {capacity_mb} MB left")]
    InsufficientCapacity {
        wanted_mb: u64,
        free_mb: u64,
        capacity_mb: u64,
    },
    /// The database was written by a newer Hangar; opening it could lose what it records.
    #[error("the state database has schema version {found}, newer than this Hangar's {known}")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;
