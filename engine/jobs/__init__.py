"""Jobs: how the library pieces compose into generate, train, score, demo and bench."""
