"""Runtime commands: embed, classify, qa, info."""
