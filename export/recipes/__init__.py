"""The recipes shipped with bertrt (``minilm``, ``bert-base``), read as package data."""
