"""The Faust side of the stream processors: app, batch consumer, worker, fold processes."""
