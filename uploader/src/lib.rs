//! The uploader: the public upload API (issue 4; not built yet).
