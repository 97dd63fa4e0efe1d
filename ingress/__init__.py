"""The HTTP side of the relay: GMS's customhttp endpoint, session registry, health and metrics."""
