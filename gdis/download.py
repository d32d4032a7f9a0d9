"""Obtaining COCO 2017: link a local copy, or download, verify and unpack the official archives.

A download is written to ``<name>.part`` and renamed to its final name only after its size
and MD5 are verified (the size alone where no MD5 is published), so a file with the final name
is always complete. An interrupted transfer resumes from the ``.part`` file with an HTTP Range
request. The helpers serve the other downloaded datasets too (gdis.ade20k).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from gdis.io import atomic_path

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
# Archive -> the folders or files it holds that the dataset uses.
COCO_ARCHIVE_CONTENTS = {
    "train2017": ["train2017"],
    "val2017": ["val2017"],
    "annotations_trainval2017": ["annotations/instances_train2017.json", "annotations/instances_val2017.json"],
    "unlabeled2017": ["unlabeled2017"],
    "image_info_unlabeled2017": ["annotations/image_info_unlabeled2017.json"],
}


class DownloadError(RuntimeError):
    """A download failed or did not verify; the message names the URL and what was expected."""


def md5_file(path: str | os.PathLike):
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest


def _total_size(response, offset: int) -> int | None:
    """Full size of the remote file from Content-Range (206) or Content-Length (200)."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return None if length is None else int(length) + offset


def _transfer(url: str, part: Path, hashing: dict, progress: bool) -> int | None:
    """Append the rest of ``url`` to ``part`` (resuming at its size); return the announced total size.

    ``hashing["md5"]`` is the running MD5 of ``part``; it restarts when the server cannot resume.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the part file already holds everything
            return offset
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: the server does not resume; starting again from byte 0", url)
            offset = 0
            part.unlink()
            hashing["md5"] = hashlib.md5()
        total = _total_size(response, offset)
        with open(part, "ab") as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                              desc=part.name.removesuffix(".part"), disable=not progress) as bar:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                handle.write(block)
                hashing["md5"].update(block)
                bar.update(len(block))
    return total


def download(url: str, destination: str | os.PathLike, md5: str | None, size: int | None = None, retries: int = 5,
             progress: bool = True, config_keys: str = "coco2017.base_url and coco2017.archives") -> Path:
    """Download ``url`` to ``destination`` unless it is already there; verify size and MD5 (if not None).

    Each of ``retries`` attempts resumes where the previous one stopped. On a size or MD5
    mismatch the partial file is deleted (the next run starts afresh) and DownloadError names
    the URL, the expected and the received values, and ``config_keys`` to check.
    """
    destination = Path(destination)
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    hashing = {"md5": md5_file(part) if part.exists() else hashlib.md5()}
    total = None
    for attempt in range(1, retries + 1):
        try:
            total = _transfer(url, part, hashing, progress)
            received = part.stat().st_size
            if total is None or received >= total:
                break
            error = f"connection closed at byte {received} of {total}"
        except (OSError, http.client.HTTPException) as exception:
            if isinstance(exception, urllib.error.HTTPError) and exception.code < 500:
                raise DownloadError(f"{url}: HTTP {exception.code} {exception.reason}") from None
            error = str(exception) or type(exception).__name__
        received = part.stat().st_size if part.exists() else 0
        log.warning("%s: attempt %d of %d stopped at byte %d: %s", url, attempt, retries, received, error)
        if attempt == retries:
            raise DownloadError(f"{url}: gave up after {retries} attempts at byte {received} ({error}); "
                                f"rerun to resume from {part}")
    received = part.stat().st_size
    expected_size = size or total
    problem = None
    if expected_size is not None and received != expected_size:
        problem = f"size {received} bytes, expected {expected_size}"
    elif md5 is not None and hashing["md5"].hexdigest() != md5:
        problem = f"MD5 {hashing['md5'].hexdigest()}, expected {md5}"
    if problem:
        part.unlink()
        raise DownloadError(f"{url}: downloaded file has {problem}; deleted it, rerun to download again "
                            f"(check {config_keys})")
    os.replace(part, destination)
    log.info("%s: %d bytes, %s verified -> %s", url, received, "size" if md5 is None else "MD5", destination)
    return destination


def _is_member(name: str, members: list[str]) -> bool:
    name = name.removeprefix("./").rstrip("/")
    return any(name == member or name.startswith(member + "/") for member in members)


def unpack(archive: str | os.PathLike, root: str | os.PathLike, members: list[str]) -> None:
    """Extract ``members`` (paths inside a zip or tar ``archive``) into ``root``, each replaced atomically.

    Unpacking again gives the same tree; a killed unpack leaves only a hidden temporary folder.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".unpack-{Path(archive).stem}.", dir=root))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(scratch, members=[name for name in handle.namelist() if _is_member(name, members)])
        else:
            with tarfile.open(archive) as handle:  # the "data" filter refuses links and paths leaving scratch
                handle.extractall(scratch, members=[m for m in handle.getmembers() if _is_member(m.name, members)],
                                  filter="data")
        for member in members:
            source, target = scratch / member, root / member
            if not source.exists():
                raise DownloadError(f"archive {archive} does not hold {member}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink():  # a link to a local copy, from an earlier configuration
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
            os.replace(source, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# The archives of COCO 2017's train and val sets, and those of its extra unlabelled images (unlabeled2017).
COCO_TRAIN_VAL = ("train2017", "val2017", "annotations_trainval2017")
COCO_UNLABELED = ("unlabeled2017", "image_info_unlabeled2017")


def link_local_copy(local_copy: str | os.PathLike, root: str | os.PathLike, members: list[str],
                    config_key: str = "dataset.coco2017.local_copy") -> None:
    """Symlink each of ``members`` of an existing dataset folder into ``root`` (nothing is copied)."""
    local_copy, root = Path(local_copy).resolve(), Path(root)
    missing = [member for member in members if not (local_copy / member).exists()]
    if missing:
        raise FileNotFoundError(f"{config_key} {local_copy} lacks {', '.join(missing)}")
    for member in members:
        target = root / member
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to(local_copy / member)


def prepare_coco2017(coco2017: dict, root: str | os.PathLike, names: tuple[str, ...] = COCO_TRAIN_VAL,
                     progress: bool = True) -> None:
    """Make ``root`` hold the archives ``names`` of COCO 2017 in its usual layout, from a local copy or the
    (resumable) downloads."""
    root = Path(root)
    members = [member for name in names for member in COCO_ARCHIVE_CONTENTS[name]]
    if coco2017["local_copy"]:
        link_local_copy(coco2017["local_copy"], root, members)
        log.info("linked %s from %s into %s", ", ".join(members), coco2017["local_copy"], root)
        return
    for name in names:
        spec = coco2017["archives"][name]
        url = coco2017["base_url"].rstrip("/") + "/" + spec["path"].lstrip("/")
        archive = download(url, root / "downloads" / Path(spec["path"]).name, spec["md5"], spec.get("size"),
                           coco2017["retries"], progress)
        unpack(archive, root, COCO_ARCHIVE_CONTENTS[name])
        log.info("unpacked %s into %s", archive, root)


def prepare_dataset(dataset: dict, root: str | os.PathLike, coco_unlabeled2017: bool = False,
                    progress: bool = True) -> None:
    """Assemble the config's paper dataset (``dataset`` section) in ``root``: COCO 2017 linked or downloaded
    (its extra unlabelled images with ``coco_unlabeled2017``), Cityscapes unpacked and converted, or ADE20K
    linked or downloaded and converted."""
    source = dataset["source"]
    if coco_unlabeled2017 and source != "coco2017":
        raise ValueError(f"dataset.source is {source!r}: unlabeled2017 belongs to coco2017")
    if source == "coco2017":
        prepare_coco2017(dataset["coco2017"], root, COCO_UNLABELED if coco_unlabeled2017 else COCO_TRAIN_VAL, progress)
    elif source == "cityscapes":
        from gdis.cityscapes import prepare_cityscapes

        cityscapes = dataset["cityscapes"]
        prepare_cityscapes(cityscapes["archives_dir"] or Path(root) / "archives", root, cityscapes["workers"])
    elif source == "ade20k":
        from gdis.ade20k import prepare_ade20k

        prepare_ade20k(dataset["ade20k"], root, dataset["ade20k"]["workers"], progress)
    else:
        raise ValueError(f"dataset.source is {source!r}: only coco2017, cityscapes and ade20k are prepared")
    log.info("%s is ready in %s", dataset["name"], root)
