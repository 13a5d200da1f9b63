"""The command line: `claude-hooks` and its commands, an edge like `web`."""
