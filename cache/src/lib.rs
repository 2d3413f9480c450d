//! The cache tier: hot photos over HTTP in front of the stores (issue 5; not built yet).
