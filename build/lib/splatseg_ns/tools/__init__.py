"""What the `splatseg` subcommands do, one module each, on a `TrainedRun` and the core modules."""
