"""Stage modules. Every public module here is imported by :func:`pipeline.stage_api.discover_stages`."""
