"""Client-side commands: install the extension, run the embedded cluster, the demo. Never imported by
the server."""
