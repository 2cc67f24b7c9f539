"""Many runs: configs expanded from a params block and trained into the run cache, keyed by
config, locked, sealed and resumable (engine), as worker processes (worker) or cluster jobs
(cluster)."""
