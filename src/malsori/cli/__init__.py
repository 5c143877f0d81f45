"""The ``malsori`` command line: transcribe files, list models, serve, stream."""
