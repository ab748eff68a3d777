"""The `editloop` command: `app` (the group, its error contract) and a module per command group."""
