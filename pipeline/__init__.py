"""The streaming runtime: sources, camera processes, shared-memory ring, VMP stage, clip windows,
scheduler, ZeroMQ publish/subscribe, latency records, config and the CLI."""
