"""dsched node: the I/O shell around core (HTTP API, Redis store, Raft, workers)."""
