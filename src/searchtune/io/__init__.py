"""Storage for local paths and gs:// URIs: ``storage`` is the entry point; ``local`` and ``gcs`` implement ``backend.Backend``."""
