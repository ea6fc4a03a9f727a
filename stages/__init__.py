"""Stage modules. Every public module here is imported by :func:`pipeline.registry.discover_stages`."""
