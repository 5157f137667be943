"""The ingest step's parts: reading files in record batches (``files``) and checking rows (``rows``)."""
