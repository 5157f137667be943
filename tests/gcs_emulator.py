"""A real GCS emulator server for the tests: ``gcp-storage-emulator`` on a loopback port.

What the emulator does and does not do (checked against gcp-storage-emulator's source):

* It stores objects in memory, hands out a ``generation`` (a nanosecond timestamp) per
  write, supports resumable uploads in chunks, computes CRC32C and MD5, rejects uploads
  whose declared checksum does not match, and returns ``x-goog-hash`` on downloads, so
  the client library's download checksum check really runs.
* It ignores generation preconditions (``ifGenerationMatch`` / ``ifGenerationNotMatch``)
  entirely: every write overwrites. The registry's create-if-absent and compare-and-swap
  depend on them, so this module starts the emulator with those preconditions added,
  implemented as documented for GCS (HTTP 412 ``conditionNotMet`` when the live object's
  generation does not match; ``0`` means "must not exist"; for resumable uploads checked
  at the start and again when the upload completes). The server handles one request at a
  time, so check-and-write is atomic, as on GCS. Nothing else about the emulator is
  changed, and none of searchtune's code is replaced.
* It has no IAM, so it never answers 403. To test how searchtune reports a permission
  error, every request for a bucket named ``denied-*`` is answered as GCS answers a caller
  without access: HTTP 403 with GCS's error body. Missing buckets and objects are the
  emulator's own 404s.

Run directly (``python tests/gcs_emulator.py --port N``) it serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

HOST = "127.0.0.1"


# --------------------------------------------------------------------------- server side


def _install_preconditions() -> None:
    """Make the emulator honour ifGenerationMatch / ifGenerationNotMatch like GCS does."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    pending: dict[str, tuple[str | None, str | None]] = {}  # resumable upload id -> preconditions

    def current_generation(storage, bucket, name):
        try:
            return storage.get_file_obj(bucket, name)["generation"]
        except NotFound:
            return None

    def holds(match, not_match, current) -> bool:
        # GCS: generation 0 in ifGenerationMatch means "only if there is no live object".
        if match is not None and (current is not None if match == "0" else current != match):
            return False
        return not_match is None or (current is not None if not_match == "0" else current != not_match)

    def query_preconditions(request):
        return tuple((request.query.get(key) or [None])[0] for key in ("ifGenerationMatch", "ifGenerationNotMatch"))

    def fail(response):
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold.",
                                 "errors": [{"reason": "conditionNotMet", "domain": "global",
                                             "message": "At least one of the pre-conditions you specified did not hold."}]}})

    def guarded_upload(original, name_of):
        def handler(request, response, storage):
            match, not_match = query_preconditions(request)
            bucket = request.params["bucket_name"]
            if not holds(match, not_match, current_generation(storage, bucket, name_of(request))):
                return fail(response)
            return original(request, response, storage)
        return handler

    def multipart_name(request):
        return (request.query.get("name") or [None])[0] or request.data["meta"].get("name")

    def resumable_name(request):
        return (request.query.get("name") or [None])[0] or (request.data or {}).get("name")

    objects._media_upload = guarded_upload(objects._media_upload, lambda r: r.query["name"][0])
    objects._multipart_upload = guarded_upload(objects._multipart_upload, multipart_name)

    create_resumable = guarded_upload(objects._create_resumable_upload, resumable_name)

    def create_resumable_and_remember(request, response, storage):
        create_resumable(request, response, storage)
        location = response._headers.get("Location")  # set only when the session was created
        if location:
            upload_id = urllib.parse.parse_qs(urllib.parse.urlparse(location).query)["upload_id"][0]
            pending[upload_id] = query_preconditions(request)

    objects._create_resumable_upload = create_resumable_and_remember
    finalize = objects._finalize_resumable_object

    def finalize_if_still_holds(response, storage, obj, data, upload_id):
        match, not_match = pending.pop(upload_id, (None, None))
        if not holds(match, not_match, current_generation(storage, obj["bucket"], obj["name"])):
            storage.delete_resumable_file_obj(upload_id)
            return fail(response)
        return finalize(response, storage, obj, data, upload_id)

    objects._finalize_resumable_object = finalize_if_still_holds

    def guarded_read(original):
        def handler(request, response, storage, *args, **kwargs):
            match, not_match = query_preconditions(request)
            current = current_generation(storage, request.params["bucket_name"], request.params["object_id"])
            wanted = (request.query.get("generation") or [None])[0]
            if wanted is not None and current is not None and wanted != current:
                response.status = HTTPStatus.NOT_FOUND  # no object versioning: old generations are gone
                return None
            if current is not None and not holds(match, not_match, current):
                return fail(response)
            return original(request, response, storage, *args, **kwargs)
        return handler

    guarded = {objects.get: guarded_read(objects.get), objects.download: guarded_read(objects.download),
               objects.delete: guarded_read(objects.delete)}
    objects.download = guarded[objects.download]  # objects.get calls it for alt=media
    for _regex, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            handlers[method] = without_access_to_denied_buckets(guarded.get(handler, handler))


def without_access_to_denied_buckets(handler):
    """Answer requests for ``denied-*`` buckets like GCS answers a caller without IAM access."""
    from http import HTTPStatus

    def deny_or_handle(request, response, storage, *args, **kwargs):
        bucket = (request.params or {}).get("bucket_name") or ""
        if bucket.startswith("denied-"):
            message = ("anonymous-caller does not have storage.objects.get access to the Google Cloud Storage "
                       "bucket. Permission 'storage.objects.get' denied on resource (or it may not exist).")
            response.status = HTTPStatus.FORBIDDEN
            return response.json({"error": {"code": 403, "message": message,
                                            "errors": [{"message": message, "domain": "global", "reason": "forbidden"}]}})
        return handler(request, response, storage, *args, **kwargs)

    return deny_or_handle


def _serve(port: int) -> None:
    from gcp_storage_emulator.server import create_server

    _install_preconditions()
    server = create_server(HOST, port, in_memory=True)
    server.run()


# --------------------------------------------------------------------------- test side


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Emulator:
    """The emulator running in a child process; ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Emulator:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gcp-storage-emulator exited with status {self.process.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.endpoint + "/", timeout=1) as response:
                if response.status == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not answer on {self.endpoint} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(name)
        return name


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    _serve(parser.parse_args().port)
