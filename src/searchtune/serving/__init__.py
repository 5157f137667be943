"""Online serving: the KServe model server behind ``searchtune serve`` (rerank, search, pair scoring)."""
