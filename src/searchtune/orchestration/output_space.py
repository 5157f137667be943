"""Before a local run starts: its output folder is a writable folder with room for what the run writes.

A full disk found after two minutes of training loses the training; a read-only folder or
a file where a folder should be fails the first step with an OS error. All three are
checked here, before any step, and reported as ``EnvironmentFault`` (exit 5).

How much room: the measured disk use of the pipeline (bench/results/scale.json: ingest's
spill, the splits and the token shards come to 1.8x the uncompressed input) rounded up to
2x, plus a fixed 200 MB for the model, the production model's copy, the evaluation and the
reports (the default run writes 25 MB of them). Compressed input counts at 4x its size.
"""

import errno
import os
import shutil
import tempfile

from searchtune.errors import ENVIRONMENT_ERRNOS, EnvironmentFault, SearchtuneError

OUTPUT_PER_INPUT_BYTE = 2.0
FIXED_OUTPUT_BYTES = 200 * 2**20
COMPRESSED_RATIO = 4.0
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")


def estimated_output_bytes(data: str) -> int:
    """What a run on ``data`` writes into its output folder, by the measured ratios above."""
    from searchtune.steps.preflight import snapshot

    input_bytes = 0.0
    if data:
        try:
            files = snapshot(data)
        except SearchtuneError:
            files = []  # preflight says what is wrong with the data, in its own words
        for file in files:
            input_bytes += file.size * (COMPRESSED_RATIO if file.uri.endswith(COMPRESSED_SUFFIXES) else 1.0)
    return int(input_bytes * OUTPUT_PER_INPUT_BYTE) + FIXED_OUTPUT_BYTES


def check_output_dir(output_dir: str, data: str) -> None:
    """Raise ``EnvironmentFault`` unless ``output_dir`` is (or can be made) a writable folder with room for the run.

    Makes the folder if it is missing (as the run would), and leaves nothing else behind.
    """
    flag = f"--output-dir {output_dir}"
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise EnvironmentFault(f"{flag} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        raise EnvironmentFault(f"{flag} cannot be written: {ENVIRONMENT_ERRNOS[error.errno]}") from None
    free = shutil.disk_usage(output_dir).free
    needed = estimated_output_bytes(data)
    if free < needed:
        raise EnvironmentFault(f"{flag} has {free / 2**20:.0f} MB free; the run needs about {needed / 2**20:.0f} MB "
                               f"({OUTPUT_PER_INPUT_BYTE:.0f}x the input, {FIXED_OUTPUT_BYTES / 2**20:.0f} MB for the "
                               f"model and reports) ({os.strerror(errno.ENOSPC).lower()})")
