//! The directory: photo id → logical volume → replicas, placement and store liveness (issue 3; not built yet).
