"""A local GCS emulator (PyPI `gcp-storage-emulator`) on 127.0.0.1 for the gs:// tests,
and the environment that points every client the project uses at it:
  tensorstore (orbax)   TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING
  gcsfs (etils.epath)   STORAGE_EMULATOR_HOST, an anonymous token (fsspec's
                        FSSPEC_GCS_TOKEN), GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (without
                        it every open first waits about a minute on a bucket-type lookup)
  google-cloud-storage  STORAGE_EMULATOR_HOST (tensorboardX's gs:// event writer)
  array_record (tfds)   CLOUD_STORAGE_EMULATOR_ENDPOINT
and keeps the Google auth libraries off the metadata server (GCE_METADATA_HOST on a closed
local port, NO_GCE_CHECK).

Two gaps of the emulator (gcp-storage-emulator 2026.7.19) are closed when it is started
here, so that it answers as GCS does:
  * its media downloads lack the `x-goog-generation` header that GCS sends with every
    object read. tensorstore needs it to write an OCDBT manifest that already exists under
    a generation condition; without it an orbax save of more than a few arrays fails with
    "Malformed StorageGeneration" (measured: 80 arrays fail, 4 pass). The header is added
    from the object's own stored generation.
  * it ignores the `ifGenerationMatch=0` precondition of an upload (measured: a second
    create-if-absent upload overwrites). GCS answers 412 when the object exists; so does
    this one for simple (media / multipart) uploads, which is what the workdir lock's
    create-if-absent sends. The emulator's check is not atomic across concurrent
    requests; on GCS the precondition is.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def client_env(endpoint: str) -> dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": endpoint, "TENSORSTORE_GCS_HTTP_URL": endpoint,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon",
          "FSSPEC_GS_TOKEN": "anon", "GOOGLE_CLOUD_PROJECT": "test",
          "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
          "NO_GCE_CHECK": "true"}


@contextlib.contextmanager
def gcs_emulator(bucket: str, workdir: str):
  """Starts the emulator with `bucket`, yields the client environment, stops it."""
  port = _free_port()
  endpoint = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(port), bucket],
      cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while True:
      try:
        urllib.request.urlopen(f"{endpoint}/storage/v1/b/{bucket}", timeout=2).read()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"the GCS emulator did not start on {endpoint}") from None
        time.sleep(0.2)
    yield client_env(endpoint)
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def _serve(port: int, bucket: str) -> None:
  """Runs the emulator in this process (in memory) with media downloads sending
  x-goog-generation, as GCS does (see the module docstring)."""
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects
  plain_download, plain_insert = objects.download, objects.insert

  def download(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # a missing object: the emulator's own handler answers 404
      pass
    return plain_download(request, response, storage, *args, **kwargs)

  def insert(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch", [""])[0] == "0":
      name = (request.query["name"][0] if "name" in request.query
              else request.data.get("meta", {}).get("name") if isinstance(request.data, dict) else None)
      try:
        storage.get_file_obj(request.params["bucket_name"], name)
        response.status = HTTPStatus.PRECONDITION_FAILED
        response.json({"error": {"code": 412, "message": "At least one of the pre-conditions "
                                 "you specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
        return None
      except NotFound:
        pass
    return plain_insert(request, response, storage, *args, **kwargs)

  objects.download = download  # objects.get (alt=media) looks it up at call time
  for _, methods in server.HANDLERS:  # the routing table holds the functions themselves
    for method, handler in methods.items():
      methods[method] = {plain_download: download, plain_insert: insert}.get(handler, handler)
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
