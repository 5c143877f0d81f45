"""HTTP and WebSocket transport: thin adapters over the engine, jobs and streaming services."""
