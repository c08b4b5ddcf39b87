"""What every builder of real scans shares: listing files, accepting them, preprocessing them into
examples, the image-size config and the builder base.

Each real builder (`sigcomp2011`, `cedar`, `signature_folder`) is a `RealBuilder` that says only
what is particular to its layout: where the root is and what each file under it is (a
`Classifier`). This module gives it a listing of the files under the root, each classified into
writer / genuine-or-forged / forger or rejected with a reason; the checks that a listing is usable
(no unexplained image, every writer with a genuine signature, not empty); preprocessing once, at
build time, on a thread pool; and the `skipped_files.json` report written next to the prepared
data when `skip_bad_files` is set. It is not for pairs or splits by writer (`siamjax.pairs`), nor
for decoding (`siamjax.preprocess`), nor for the example format (`siamjax.datasets.common`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from siamjax import preprocess
from siamjax.datasets import common
from siamjax.errors import UserError

# Files with these suffixes (any case) are images and must be explained; all others (csv, txt,
# .DS_Store, Thumbs.db, ...) are ignored.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
)
REPORT_NAME = "skipped_files.json"  # Written next to the prepared data when skip_bad_files.
# Images decoded ahead of the writer: bounds memory on big sets while keeping the pool busy.
_WINDOW = 64


# ---- Listing: which file is what -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """One signature file as the builder will store it."""

    relpath: str  # POSIX path relative to the dataset root: the example's `path` and key.
    writer: str
    is_genuine: bool
    forger: int = common.UNKNOWN_FORGER
    split: str = "train"


@dataclasses.dataclass(frozen=True)
class Problem:
    """A file (or rule) the build cannot use, and why: raised, or reported when skipping."""

    path: str  # Relative path of the file, or the rule / writer concerned.
    reason: str

    def message(self, root: epath.PathLike | None = None) -> str:
        where = f"{epath.Path(root) / self.path}" if root is not None and self.path else self.path
        return f"{where}: {self.reason}"


@dataclasses.dataclass
class Listing:
    """Everything found under a root: usable images, problems, and ignored non-image files."""

    root: epath.Path
    images: list[SourceImage]
    problems: list[Problem]
    ignored: list[str]

    def split(self, name: str) -> list[SourceImage]:
        return [im for im in self.images if im.split == name]

    def splits(self) -> list[str]:
        return sorted({im.split for im in self.images})


# A classifier maps a relative path to its SourceImage, or to the reason it cannot be used.
Classifier = Callable[[str], "SourceImage | str"]


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def walk(root: epath.PathLike) -> list[str]:
    """Sorted POSIX paths, relative to `root`, of every file under it (through tf.io.gfile, so
    gs:// works). Hidden files and folders and macOS's `__MACOSX` / `._x` copies are left out:
    they are not scans, even when their names end in .png."""
    root_s = str(root).rstrip("/")
    found = []
    for dirpath, subdirs, files in tf.io.gfile.walk(root_s):
        subdirs[:] = sorted(d for d in subdirs if not _hidden(d.rstrip("/")))
        rel_dir = dirpath[len(root_s) :].strip("/")
        if any(_hidden(p) for p in rel_dir.split("/") if p):
            continue
        found.extend(f"{rel_dir}/{f}" if rel_dir else f for f in files if not _hidden(f))
    return sorted(found)


def is_image(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1].lower()
    return "." in name and name[name.rindex(".") :] in IMAGE_SUFFIXES


def scan(root: epath.PathLike, classify: Classifier) -> Listing:
    """Lists and classifies every file under `root`; checks each writer of each split has a
    genuine signature (without one, its forgeries cannot be paired: each becomes a problem)."""
    root = epath.Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    images, problems, ignored = [], [], []
    for rel in walk(root):
        if not is_image(rel):
            ignored.append(rel)
            continue
        result = classify(rel)
        if isinstance(result, SourceImage):
            images.append(result)
        else:
            problems.append(Problem(rel, result))
    has_genuine = {(im.split, im.writer) for im in images if im.is_genuine}
    orphans = [im for im in images if (im.split, im.writer) not in has_genuine]
    for im in orphans:
        problems.append(
            Problem(
                im.relpath,
                f"writer {im.writer!r} has no genuine signature in {im.split!r}, so its "
                "forgeries cannot be compared with anything",
            )
        )
    images = [im for im in images if (im.split, im.writer) in has_genuine]
    if ignored:
        logging.info("%s: ignored %d non-image files (e.g. %s)", root, len(ignored), ignored[0])
    return Listing(root=root, images=images, problems=problems, ignored=ignored)


def accept(listing: Listing, skip_bad_files: bool, what: str) -> list[SourceImage]:
    """The images to build, after the listing's problems: raises the first problem as a
    `UserError` unless `skip_bad_files`; never returns an empty list (that is always an error)."""
    if listing.problems and not skip_bad_files:
        first = listing.problems[0]
        more = len(listing.problems) - 1
        raise UserError(
            f"{first.message(listing.root)}"
            + (f" (and {more} more problems)" if more else "")
            + f". Fix the {what} folder, or set skip_bad_files=True (config.real.skip_bad_files)"
            f" to skip such files and get a report ({REPORT_NAME})."
        )
    if not listing.images:
        raise UserError(
            f"{listing.root}: no usable signature image for {what} "
            f"({len(listing.problems)} rejected, {len(listing.ignored)} non-image files)"
            + (f"; first rejected: {listing.problems[0].message()}" if listing.problems else "")
        )
    return listing.images


def content_hashes(root: epath.PathLike, images: Iterable[SourceImage]) -> dict[str, str]:
    """sha256 of each image's bytes, by relative path: finds copies under different names."""
    root = epath.Path(root)

    def one(im: SourceImage) -> tuple[str, str]:
        return im.relpath, hashlib.sha256((root / im.relpath).read_bytes()).hexdigest()

    with concurrent.futures.ThreadPoolExecutor() as pool:
        return dict(pool.map(one, images))


# ---- Generation: preprocessing once, on a thread pool -----------------------------------------


def _imap(fn: Callable, items: Iterable, window: int = _WINDOW) -> Iterator:
    """`map` on a thread pool, in order, at most `window` ahead; PIL and numpy release the GIL
    for most of the work, so the cores are used. Pending work is cancelled on an error."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _load(root: epath.Path, im: SourceImage, height: int, width: int, ink: str):
    """(image uint8 [h, w, 1] or None, sha256, error message or None) for one file."""
    path = root / im.relpath
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, "", f"{path}: cannot read file ({e})"
    sha = common.sha256_hex(data)
    try:
        return preprocess.preprocess_bytes(data, str(path), height, width, ink), sha, None
    except UserError as e:
        return None, sha, str(e)


def generate_examples(
    root: epath.PathLike,
    images: list[SourceImage],
    height: int,
    width: int,
    skip_bad_files: bool,
    problems: list[Problem],
    ink: str = "raw",
) -> Iterator[tuple[str, dict]]:
    """(key, example) in the format of `siamjax.datasets.common`, one writer at a time.

    A file that cannot be decoded or has no ink raises its `UserError`, or, when skipping, goes
    into `problems`; so do the forgeries of a writer whose every genuine signature was bad.
    """
    root = epath.Path(root)
    images = sorted(images, key=lambda im: (im.writer, im.relpath))
    results = _imap(lambda im: (im, *_load(root, im, height, width, ink)), images)
    yielded = 0
    group: list[tuple[str, dict]] = []
    writer = None

    def flush() -> Iterator[tuple[str, dict]]:
        if group and not any(ex["is_genuine"] for _, ex in group):
            for key, _ in group:
                problems.append(
                    Problem(key, f"writer {writer!r}: none of its genuine signatures is readable")
                )
            return
        yield from group

    for im, image, sha, error in results:
        if im.writer != writer:
            for item in flush():
                yielded += 1
                yield item
            group, writer = [], im.writer
        if error is not None:
            if not skip_bad_files:
                raise UserError(
                    f"{error}. Replace the file, or set skip_bad_files=True "
                    f"(config.real.skip_bad_files) to skip it and get a report ({REPORT_NAME})."
                )
            prefix = f"{root / im.relpath}: "  # The report names the file once, relatively.
            problems.append(Problem(im.relpath, error.removeprefix(prefix)))
            continue
        group.append(
            (
                im.relpath,
                {
                    "image": image,
                    "writer": im.writer,
                    "is_genuine": im.is_genuine,
                    "forger": np.int64(im.forger),
                    "path": im.relpath,
                    "sha256": sha,
                },
            )
        )
    for item in flush():
        yielded += 1
        yield item
    if not yielded:
        first = problems[-1].message(root) if problems else "none"
        raise UserError(f"{root}: no image of this split was usable (last problem: {first})")


# ---- Configs and the shared builder -----------------------------------------------------------


def size_name(height: int, width: int, skip_bad_files: bool, ink: str = "raw") -> str:
    """Config name for a size: "150x220", or "150x220_skip" when bad files may be skipped (a
    build that skipped files must not pass for a complete one), with "_ink-binary" or
    "_ink-normalized" when the ink is not kept raw (preprocess.INK_MODES)."""
    preprocess.check_ink(ink)
    return (
        f"{height}x{width}"
        + ("_skip" if skip_bad_files else "")
        + ("" if ink == "raw" else f"_ink-{ink}")
    )


def check_size(height: int, width: int) -> None:
    for key, value in (("image_height", height), ("image_width", width)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 8:
            raise UserError(f"{key}={value!r}: must be an integer of at least 8 (pixels)")


@dataclasses.dataclass(eq=False)
class ImageConfig(tfds.core.BuilderConfig):
    """Output size, ink mode and bad-file policy; the name encodes them, so each prepares its own
    copy."""

    height: int = 150
    width: int = 220
    skip_bad_files: bool = False
    ink: str = "raw"

    @classmethod
    def of(
        cls, height: int, width: int, skip_bad_files: bool = False, ink: str = "raw"
    ) -> ImageConfig:
        check_size(height, width)
        return cls(
            name=size_name(height, width, skip_bad_files, ink),
            description=f"{height}x{width} images"
            + (", unreadable files skipped" if skip_bad_files else "")
            + ("" if ink == "raw" else f", {ink} ink"),
            height=int(height),
            width=int(width),
            skip_bad_files=bool(skip_bad_files),
            ink=ink,
        )


def manual_dir(dl_manager: tfds.download.DownloadManager) -> epath.Path:
    """`dl_manager.manual_dir`, with TFDS's multi-line assertion turned into a `UserError`."""
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError as e:
        raise UserError(
            f"{' '.join(str(e).split()[:12])} ...: set --config.data_dir (or SIAMJAX_DATA_DIR) "
            "to the folder holding the raw dataset"
        ) from e


class RealBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What the real-data builders share; subclasses say where the root is and what each file is.

    Subclasses set `find_root` (the manual dir -> the dataset's root folder) and `list_files`
    (root -> `Listing`), or override `_listing` where the root need not be under the manual dir,
    and set `MANUAL_DOWNLOAD_INSTRUCTIONS`, `DESCRIPTION` and `HOMEPAGE`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: images normalised by siamjax.preprocess."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    WHAT = "dataset"  # How errors call the raw folder.
    # The builder module's own functions, as static methods: manual dir -> root -> listing.
    find_root: Callable[[epath.Path], epath.Path]
    list_files: Callable[[epath.PathLike], Listing]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._problems: list[Problem] = []

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=common.features(config.height, config.width),
            homepage=self.HOMEPAGE or None,
            citation=self._citation(),
        )

    def _citation(self) -> str | None:
        """The builder folder's CITATIONS.bib: what users of the prepared data should cite."""
        path = type(self).code_path.parent / "CITATIONS.bib"
        return path.read_text() if path.exists() else None

    @classmethod
    def for_size(
        cls,
        height: int,
        width: int,
        *,
        data_dir: str,
        skip_bad_files: bool = False,
        ink: str = "raw",
    ) -> RealBuilder:
        """The builder for one image size and ink mode, preparing into `data_dir` (TFDS's
        folder); for the builders whose configs are `ImageConfig`s (sigcomp2011, cedar)."""
        name = size_name(height, width, skip_bad_files, ink)
        if name in cls.builder_configs:  # TFDS refuses a new config object with a known name.
            return cls(config=name, data_dir=data_dir)
        return cls(config=ImageConfig.of(height, width, skip_bad_files, ink), data_dir=data_dir)

    def _listing(self, dl_manager: tfds.download.DownloadManager) -> Listing:
        """Every image under the dataset's root, found in the manual dir."""
        return self.list_files(self.find_root(manual_dir(dl_manager)))

    def _after_listing(self, listing: Listing) -> None:
        """Hook for per-dataset checks and logs (duplicates, counts)."""

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        config = self.builder_config
        self._problems = []
        listing = self._listing(dl_manager)
        images = accept(listing, config.skip_bad_files, self.WHAT)
        self._problems.extend(listing.problems)
        self._after_listing(listing)
        logging.info(
            "%s: %d images of %d writers under %s (%d non-image files ignored)",
            self.name,
            len(images),
            len({im.writer for im in images}),
            listing.root,
            len(listing.ignored),
        )
        return {
            split: self._generate_examples(listing.root, listing.split(split))
            for split in listing.splits()
        }

    def _generate_examples(self, root: epath.Path, images: list[SourceImage]):
        config = self.builder_config
        return generate_examples(
            root,
            images,
            config.height,
            config.width,
            config.skip_bad_files,
            self._problems,
            config.ink,
        )

    @property
    def report_path(self) -> epath.Path:
        """Where `skip_bad_files` builds list what they skipped and why."""
        return self.data_path / REPORT_NAME

    def _download_and_prepare(self, dl_manager, download_config):  # noqa: D401 - TFDS hook.
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        if self.builder_config.skip_bad_files:
            # self.data_path is the temporary folder here; TFDS renames it when all is written.
            report = {
                "dataset": self.name,
                "config": self.builder_config.name,
                "num_skipped": len(self._problems),
                "skipped": [dataclasses.asdict(p) for p in self._problems],
            }
            self.report_path.write_text(json.dumps(report, indent=1) + "\n")

    def _post_download_and_prepare_hook(self) -> None:
        if self.builder_config.skip_bad_files:
            log = logging.warning if self._problems else logging.info
            log(
                "%s/%s: skipped %d files; what and why: %s",
                self.name,
                self.builder_config.name,
                len(self._problems),
                self.report_path,
            )
