"""Export-stage commands: export, validate, eval (they need the export extra)."""
