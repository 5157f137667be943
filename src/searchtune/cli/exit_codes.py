"""The exit codes of ``searchtune``, so cron jobs and scripts can tell what happened."""

OK = 0  # the run finished and its candidate is production now, or there was nothing to do
INTERNAL_ERROR = 1  # a crash: a bug or a broken environment; the traceback says where
USER_ERROR = 2  # the input was refused: a bad parameter, bad data, an unreachable registry
NOT_PROMOTED = 3  # the run finished, but its candidate did not become production (not blessed, or production moved)
VERIFY_PROBLEMS = 4  # `searchtune models verify` found something wrong
ENVIRONMENT = 5  # the machine refused: a full disk, a read-only or wrong kind of folder, a link loop
INTERRUPTED = 130

EPILOG = """exit codes:
  0  the run finished and its candidate is production now (or there was nothing to do)
  1  internal failure (a crash; see the traceback)
  2  the input was refused (bad parameter, bad data, unreachable registry); nothing was registered
  3  the run finished but its candidate did not become production (not blessed, or production moved)
  4  (models verify) the registry check found problems
  5  the machine refused (full disk, read-only or wrong kind of folder, link loop); nothing was registered"""
