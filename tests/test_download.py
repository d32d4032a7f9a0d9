"""COCO download against a local HTTP server: success, resume after a cut, checksum mismatch, unpack, link."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from gdis.config import validate_config
from gdis.download import DownloadError, download, prepare_coco2017, unpack

REPO = Path(__file__).resolve().parents[1]


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) with Range support; ``cut_after`` bytes ends the first response early."""

    def __init__(self, files: dict[str, bytes], cut_after: int | None = None, ranges: bool = True):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files, self.cut_after, self.ranges = files, cut_after, ranges
        self.requests: list[tuple[str, str | None]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: ArchiveServer = self.server
        header = self.headers.get("Range")
        server.requests.append((self.path, header))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(header.removeprefix("bytes=").rstrip("-")) if header and server.ranges else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if server.cut_after is not None:
            payload, server.cut_after = payload[: server.cut_after], None
            self.wfile.write(payload)
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def serve():
    servers = []

    def start(files, **kwargs) -> ArchiveServer:
        server = ArchiveServer(files, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


BLOB = bytes(range(256)) * 4000  # 1 MB: several read chunks


def test_download_verifies_and_names_the_file_only_when_complete(serve, tmp_path):
    server = serve({"/a.bin": BLOB})
    target = download(f"{server.base_url}/a.bin", tmp_path / "a.bin", _md5(BLOB), size=len(BLOB), progress=False)
    assert target.read_bytes() == BLOB
    assert not (tmp_path / "a.bin.part").exists()
    download(f"{server.base_url}/a.bin", target, _md5(BLOB), progress=False)
    assert len(server.requests) == 1, "a finished file is not downloaded again"


def test_interrupted_transfer_resumes_with_a_range_request(serve, tmp_path):
    server = serve({"/a.bin": BLOB}, cut_after=300_000)
    target = download(f"{server.base_url}/a.bin", tmp_path / "a.bin", _md5(BLOB), retries=3, progress=False)
    assert target.read_bytes() == BLOB
    assert server.requests == [("/a.bin", None), ("/a.bin", "bytes=300000-")]


def test_killed_run_resumes_from_the_part_file(serve, tmp_path):
    server = serve({"/a.bin": BLOB}, cut_after=300_000)
    with pytest.raises(DownloadError, match="gave up after 1 attempts at byte 300000.*rerun to resume"):
        download(f"{server.base_url}/a.bin", tmp_path / "a.bin", _md5(BLOB), retries=1, progress=False)
    assert not (tmp_path / "a.bin").exists() and (tmp_path / "a.bin.part").stat().st_size == 300_000
    download(f"{server.base_url}/a.bin", tmp_path / "a.bin", _md5(BLOB), retries=1, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == BLOB
    assert server.requests[-1] == ("/a.bin", "bytes=300000-")


def test_server_without_ranges_restarts_from_zero(serve, tmp_path):
    server = serve({"/a.bin": BLOB}, ranges=False)
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from elsewhere")
    download(f"{server.base_url}/a.bin", tmp_path / "a.bin", _md5(BLOB), progress=False)
    assert (tmp_path / "a.bin").read_bytes() == BLOB


@pytest.mark.parametrize("md5, size, message", [("0" * 32, None, "MD5 [0-9a-f]{32}, expected 0{32}"),
                                                (None, 5, "size 1024000 bytes, expected 5")])
def test_mismatch_is_a_clear_error_and_leaves_no_finished_looking_file(serve, tmp_path, md5, size, message):
    server = serve({"/a.bin": BLOB})
    with pytest.raises(DownloadError, match=f"/a.bin: downloaded file has {message}"):
        download(f"{server.base_url}/a.bin", tmp_path / "a.bin", md5 or _md5(BLOB), size=size, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_the_url(serve, tmp_path):
    server = serve({})
    with pytest.raises(DownloadError, match="/nope.zip: HTTP 404"):
        download(f"{server.base_url}/nope.zip", tmp_path / "nope.zip", "0" * 32, progress=False)


def test_unpack_is_idempotent_and_replaces_a_linked_copy(tmp_path):
    archive = tmp_path / "train2017.zip"
    archive.write_bytes(_zip({"train2017/1.jpg": b"one", "train2017/2.jpg": b"two", "README": b"not wanted"}))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "train2017").symlink_to(tmp_path / "elsewhere")
    for _ in range(2):
        unpack(archive, tmp_path / "coco", ["train2017"])
        assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == ["train2017"]
        assert (tmp_path / "coco" / "train2017" / "2.jpg").read_bytes() == b"two"
    assert (tmp_path / "elsewhere").is_dir() and not (tmp_path / "coco" / "train2017").is_symlink()


def _tiny_coco_archives() -> dict[str, bytes]:
    annotations = {name: json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]})
                   for name in ("instances_train2017.json", "instances_val2017.json")}
    return {
        "/zips/train2017.zip": _zip({"train2017/000000000009.jpg": b"jpeg"}),
        "/zips/val2017.zip": _zip({"val2017/000000000139.jpg": b"jpeg"}),
        "/annotations/annotations_trainval2017.zip": _zip({f"annotations/{n}": d.encode() for n, d in annotations.items()}
                                                          | {"annotations/captions_train2017.json": b"{}"}),
    }


def _coco2017_config(base_url: str, archives: dict[str, bytes], **extra) -> dict:
    specs = {Path(path).stem: {"path": path, "md5": _md5(data)} for path, data in archives.items()}
    return {"base_url": base_url, "archives": specs, **extra}


def _validated_coco2017(**coco2017) -> dict:
    return validate_config({"dataset": {"name": "coco", "source": "coco2017", "coco2017": coco2017}})["dataset"]["coco2017"]


def test_prepare_coco2017_downloads_verifies_and_unpacks(serve, tmp_path):
    archives = _tiny_coco_archives()
    server = serve(archives)
    coco2017 = _validated_coco2017(**_coco2017_config(server.base_url, archives))
    for _ in range(2):
        prepare_coco2017(coco2017, tmp_path / "coco", progress=False)
    root = tmp_path / "coco"
    assert (root / "train2017" / "000000000009.jpg").read_bytes() == b"jpeg"
    assert (root / "val2017" / "000000000139.jpg").is_file()
    assert sorted(p.name for p in (root / "annotations").iterdir()) == ["instances_train2017.json",
                                                                         "instances_val2017.json"]
    assert sorted(p.name for p in (root / "downloads").iterdir()) == [
        "annotations_trainval2017.zip", "train2017.zip", "val2017.zip"]
    assert len(server.requests) == 3, "the second run downloads nothing"


def test_prepare_coco2017_links_a_local_copy(tmp_path):
    local = tmp_path / "local"
    for folder in ("train2017", "val2017", "annotations"):
        (local / folder).mkdir(parents=True)
    for name in ("instances_train2017.json", "instances_val2017.json"):
        (local / "annotations" / name).write_text("{}")
    prepare_coco2017(_validated_coco2017(local_copy=str(local)), tmp_path / "coco", progress=False)
    assert (tmp_path / "coco" / "train2017").resolve() == local / "train2017"
    assert (tmp_path / "coco" / "annotations" / "instances_val2017.json").is_symlink()
    (local / "val2017").rmdir()
    with pytest.raises(FileNotFoundError, match=r"dataset.coco2017.local_copy .*local lacks val2017"):
        prepare_coco2017(_validated_coco2017(local_copy=str(local)), tmp_path / "again", progress=False)


@pytest.mark.slow
def test_prepare_rule_downloads_through_snakemake(serve, workflow_copy):
    archives = _tiny_coco_archives()
    server = serve(archives, cut_after=100)
    plan = {"dataset": {"name": "coco", "source": "coco2017",
                        "coco2017": _coco2017_config(server.base_url, archives)}}
    (workflow_copy / "local.yaml").write_text(json.dumps(plan))
    target = "data/coco/annotations/instances_train2017.json"
    result = subprocess.run(["snakemake", "--cores", "1", target, "--configfile", "local.yaml"],
                            cwd=workflow_copy, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workflow_copy / "data/coco/train2017/000000000009.jpg").is_file()
    assert ("/zips/train2017.zip", "bytes=100-") in server.requests

    (workflow_copy / "data").rename(workflow_copy / "old-data")
    plan["dataset"]["coco2017"]["archives"]["val2017"]["md5"] = "0" * 32
    (workflow_copy / "local.yaml").write_text(json.dumps(plan))
    result = subprocess.run(["snakemake", "--cores", "1", target, "--configfile", "local.yaml"],
                            cwd=workflow_copy, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    log = (workflow_copy / "results/logs/coco/prepare_coco2017.log").read_text()
    assert "val2017.zip: downloaded file has MD5" in log and "expected 00000000" in log
    assert not (workflow_copy / "data/coco/downloads/val2017.zip").exists()
    assert not (workflow_copy / "data/coco/annotations/instances_train2017.json").exists()
