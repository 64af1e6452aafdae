"""``pointtune data download`` against a local HTTP server (127.0.0.1, a free port) serving a small zip made
here: a correct download, a wrong checksum, a truncated transfer, and a resumed one (HTTP Range)."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import one_line_error
from pointtune.cli import main
from pointtune.data import download
from pointtune.data.errors import DatasetError


def _archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("Tiny/box/train/box_0001.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n" * 50)
    return buffer.getvalue()


ARCHIVE = _archive()
SHA256 = hashlib.sha256(ARCHIVE).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``ARCHIVE`` with Range support; ``server.truncate``: announce every byte, send half, close."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.ranges.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(ARCHIVE) - 1}/{len(ARCHIVE)}")
        else:
            self.send_response(200)
        body = ARCHIVE[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.truncate else body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.ranges, httpd.truncate = [], False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def tiny(server, monkeypatch):
    """A dataset ``tiny`` served by ``server``, with no published checksum."""
    url = f"http://127.0.0.1:{server.server_address[1]}/Tiny.zip"
    monkeypatch.setitem(download.DOWNLOADS, "tiny", download.Archive(url, "Tiny.zip", None, "prepare {out}/Tiny"))
    return url


def test_download_extracts_and_reports_the_unverified_digest(tiny, tmp_path, capsys):
    lines = download.download_dataset("tiny", tmp_path, progress=False)
    assert (tmp_path / "Tiny.zip").read_bytes() == ARCHIVE
    assert (tmp_path / "Tiny" / "box" / "train" / "box_0001.off").read_text().startswith("OFF")
    assert SHA256 in lines[0] and "UNVERIFIED" in lines[0] and lines[1].endswith(f"prepare {tmp_path}/Tiny")
    assert main(["data", "download", "tiny", "--out", str(tmp_path), "--sha256", SHA256, "--no-progress"]) == 0
    assert f"{SHA256}, verified" in capsys.readouterr().out


def test_wrong_checksum_is_one_line_and_leaves_no_finished_file(tiny, tmp_path, capsys):
    assert main(["data", "download", "tiny", "--out", str(tmp_path), "--sha256", "0" * 64, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "Tiny.zip") in err and SHA256 in err
    assert not (tmp_path / "Tiny.zip").exists() and not (tmp_path / "Tiny.zip.part").exists()


def test_truncated_transfer_is_detected_then_resumed_with_a_range(server, tiny, tmp_path):
    server.truncate = True
    with pytest.raises(DatasetError) as err:
        download.download_file(tiny, tmp_path / "Tiny.zip", SHA256, progress=False)
    one_line_error(err, tiny, "transfer ended", "rerun to resume")
    assert not (tmp_path / "Tiny.zip").exists()
    half = len(ARCHIVE) // 2
    assert (tmp_path / "Tiny.zip.part").read_bytes() == ARCHIVE[:half]
    server.truncate = False
    digest, verified = download.download_file(tiny, tmp_path / "Tiny.zip", SHA256, progress=False)
    assert server.ranges == [None, f"bytes={half}-"]
    assert (digest, verified) == (SHA256, True) and (tmp_path / "Tiny.zip").read_bytes() == ARCHIVE
    assert not (tmp_path / "Tiny.zip.part").exists()


def test_datasets_behind_terms_say_where_to_ask(capsys):
    assert main(["data", "download", "scannet", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ScanNet_TOS.pdf" in err and "scannet@googlegroups.com" in err
