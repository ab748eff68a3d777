"""The self-improvement benchmark (`editloop bench self-improve`, `editloop demo`), its report."""
