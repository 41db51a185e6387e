"""What every layer uses: atomic file writes, process-wide runtime defaults, ranks and gathers across processes."""
