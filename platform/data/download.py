"""``pointtune data download``: fetch a dataset whose licence allows a direct download.

==============  =====================================================================  ==========================
dataset         where                                                                  access
==============  =====================================================================  ==========================
modelnet40      http://modelnet.cs.princeton.edu/ModelNet40.zip (.off meshes; then     direct (Princeton ModelNet
                ``pointtune data prepare modelnet40``)                                 terms, research use);
                                                                                       SHA-256 unverified
modelnet10      http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip  direct; SHA-256 unverified
scannet         sign http://kaldir.vc.in.tum.de/scannet/ScanNet_TOS.pdf, mail it to    on request
                scannet@googlegroups.com (https://github.com/ScanNet/ScanNet)
s3dis           the form at http://buildingparser.stanford.edu/dataset.html            on request
scanobjectnn    the terms of use at https://hkust-vgd.github.io/scanobjectnn/          on request
shapenet        register at https://shapenet.org/ (ShapeNetCore; ShapeNetPart's        on request
                shapenetcore_partanno_segmentation_benchmark_v0_normal)
==============  =====================================================================  ==========================

No SHA-256 of these archives is published by their authors, so :data:`DOWNLOADS` records ``None``: the download
is then *unverified* and the command prints the SHA-256 it computed; pass it back with ``--sha256`` (or put it
in :data:`DOWNLOADS`) to verify later downloads.

A download goes to ``<name>.part`` and is renamed only once complete and verified; a rerun resumes a ``.part``
with an HTTP Range request (a server that ignores the range sends the whole file again). A transfer that ends
before the announced length is an error (the ``.part`` is kept for the next try); a file whose SHA-256 differs
from the expected one is deleted and reported.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from pointtune.data.errors import DatasetError

__all__ = ["Archive", "DOWNLOADS", "ON_REQUEST", "download_file", "download_dataset", "sha256_of"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable file: its ``url``, the ``filename`` it is saved as, its ``sha256`` (``None``: not
    published, the download is unverified) and what to run next (``then``)."""

    url: str
    filename: str
    sha256: str | None
    then: str


#: Datasets with a public URL whose terms allow a direct download.
DOWNLOADS = {
    "modelnet40": Archive("http://modelnet.cs.princeton.edu/ModelNet40.zip", "ModelNet40.zip", None,
                          "pointtune data prepare modelnet40 --raw {out}/ModelNet40 --out DIR"),
    "modelnet10": Archive("http://3dvision.princeton.edu/projects/2014/3DShapeNets/ModelNet10.zip", "ModelNet10.zip",
                          None, "read ModelNet10's .off meshes like ModelNet40's (pointtune data prepare modelnet40 "
                          "--raw {out}/ModelNet10 --out DIR)"),
}

#: Datasets whose terms must be accepted first: where to request them.
ON_REQUEST = {
    "scannet": "sign the ScanNet Terms of Use (http://kaldir.vc.in.tum.de/scannet/ScanNet_TOS.pdf) and mail it to "
               "scannet@googlegroups.com (https://github.com/ScanNet/ScanNet#scannet-data)",
    "s3dis": "fill in the request form at http://buildingparser.stanford.edu/dataset.html",
    "scanobjectnn": "agree to the terms of use at https://hkust-vgd.github.io/scanobjectnn/ to get the download link",
    "shapenet": "register at https://shapenet.org/ and accept the ShapeNet terms of use (ShapeNetCore, ShapeNetPart)",
}
ON_REQUEST["shapenetpart"] = ON_REQUEST["shapenet"]


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append ``url``'s bytes to ``part``, from its current size (Range); DatasetError on an HTTP error or
    a transfer shorter than announced."""
    from tqdm import tqdm

    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the range starts at the end: the .part is already complete
            return
        raise DatasetError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        raise DatasetError(f"{url}: cannot connect ({' '.join(str(err).split())})") from None
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored the range and sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        got = 0
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                            desc=part.name[:-5], disable=not progress,
                                                            leave=False) as bar:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (OSError, HTTPException) as err:
                raise DatasetError(f"{url}: transfer broken after {have + got} bytes ({' '.join(str(err).split())}); "
                                   f"rerun to resume {part}") from None
    if length is not None and got < int(length):
        raise DatasetError(f"{url}: transfer ended after {have + got} of {total} bytes; rerun to resume {part}")


def download_file(url: str, target: Path, sha256: str | None = None, progress: bool = True,
                  timeout: float = 60.0) -> tuple[str, bool]:
    """Download ``url`` to ``target`` (module docstring: ``.part``, resume, verify, rename).

    Args:
        url: an http(s) URL.
        target: the finished file's path; an existing one is kept (only checked against ``sha256``).
        sha256: the expected hex digest, or ``None`` for an unverified download.
        progress: show a progress bar.
        timeout: seconds a connection or read may stall.

    Returns:
        ``(sha256 computed, verified)``.

    Raises:
        DatasetError: an HTTP or connection error, a truncated transfer (``.part`` kept), or a digest other
            than ``sha256`` (the file deleted); one line naming the URL or file.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _fetch(url, part, progress, timeout)
        digest = sha256_of(part)
        candidate = part
    else:
        digest, candidate = sha256_of(target), target
    if sha256 is not None and digest != sha256.lower():
        candidate.unlink()
        raise DatasetError(f"{target}: SHA-256 {digest} differs from the expected {sha256.lower()} "
                           f"(downloaded from {url}); the file was deleted")
    if candidate is part:
        os.replace(part, target)
    return digest, sha256 is not None


def _extract(archive: Path, out: Path) -> None:
    """Extract a zip archive into ``out`` unless its marker ``<archive>.extracted`` exists."""
    marker = archive.with_name(archive.name + ".extracted")
    if marker.is_file():
        return
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(out)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"{archive}: cannot extract ({' '.join(str(err).split())})") from None
    marker.touch()


def download_dataset(dataset: str, out: str | Path, sha256: str | None = None, progress: bool = True) -> list[str]:
    """Download and extract ``dataset`` into ``out``.

    Args:
        dataset: a key of :data:`DOWNLOADS`; a key of :data:`ON_REQUEST` is an error saying how to request it.
        out: the directory (created).
        sha256: the expected digest, overriding :data:`DOWNLOADS` (which holds ``None`` when unpublished).
        progress: show a progress bar.

    Returns:
        The lines to print: what was written, the SHA-256 (and whether it was verified), what to run next.

    Raises:
        DatasetError: an unknown or on-request dataset, or any error of :func:`download_file` and extraction.
    """
    if dataset in ON_REQUEST:
        raise DatasetError(f"data download: {dataset} cannot be downloaded directly; {ON_REQUEST[dataset]}")
    if dataset not in DOWNLOADS:
        raise DatasetError(f"data download: unknown dataset {dataset!r} (downloadable: {', '.join(DOWNLOADS)}; "
                           f"on request: {', '.join(ON_REQUEST)})")
    archive = DOWNLOADS[dataset]
    out = Path(out).expanduser()
    target = out / archive.filename
    expected = sha256 or archive.sha256
    digest, verified = download_file(archive.url, target, expected, progress)
    extracted = ""
    if target.suffix == ".zip":
        _extract(target, out)
        extracted = f", extracted into {out}"
    check = ("verified" if verified else "UNVERIFIED: no published checksum; pass --sha256 " + digest +
             " to verify a later download")
    return [f"[pointtune] data download {dataset}: {target} (SHA-256 {digest}, {check}){extracted}",
            f"[pointtune] next: {archive.then.format(out=out)}"]
