"""cmlearn's application layer: run folders, training, evaluation and the CLI on the core."""
