"""Training jobs: pool selection, leases, the launcher, orchestration, publishing, the gate."""
