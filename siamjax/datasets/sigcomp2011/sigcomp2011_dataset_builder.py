"""sigcomp2011: ICDAR 2011 SigComp (Dutch offline) in the popular Kaggle `sign_data` layout.

Splits `train` and `test` are Kaggle's folders. They leak: every `test/` image is a byte-identical
copy of a `train/` image (the build logs how many); an honest evaluation splits writers of `train`
(`siamjax.pairs`) and drops duplicates by `sha256`. Kaggle's pair lists, which share writers and
images between their splits, are read by `kaggle.py` beside this module, for comparison only.

Not for decoding (`siamjax.preprocess`) nor for what all real builders share (listing, checks,
thread pool, skip report, the builder base: `siamjax.datasets.real`).
"""

from __future__ import annotations

import collections
import re

from absl import logging
from etils import epath

from siamjax.datasets import common, real
from siamjax.errors import UserError

SPLITS = ("train", "test")
_EXT = r"\.(?:png|jpe?g|tiff?|bmp)"
# The two naming schemes (see the README): genuine WWW_NN / NN_WWW, forged FFFFWWW_NN / NN_FFFFWWW.
_GENUINE = (
    re.compile(rf"(?P<writer>\d{{3}})_(?P<n>\d{{2}}){_EXT}", re.IGNORECASE),
    re.compile(rf"(?P<n>\d{{2}})_(?P<writer>\d{{3}}){_EXT}", re.IGNORECASE),
)
_FORGED = (
    re.compile(rf"(?P<forger>\d{{4}})(?P<writer>\d{{3}})_(?P<n>\d{{2}}){_EXT}", re.IGNORECASE),
    re.compile(rf"(?P<n>\d{{2}})_(?P<forger>\d{{4}})(?P<writer>\d{{3}}){_EXT}", re.IGNORECASE),
)
_FOLDER = re.compile(r"(?P<writer>\d{3})(?P<forg>_forg)?")


def classify(rel: str) -> real.SourceImage | str:
    """What `train/001/001_01.PNG` or `test/049_forg/02_0114049.PNG` is, or why it is unexpected.

    The writer must agree between folder and file name, genuine names must sit in `NNN/` and
    forged ones in `NNN_forg/`; the forger id is the name's four-digit FFFF.
    """
    parts = rel.split("/")
    if parts[0] not in SPLITS:
        return "image outside train/ and test/ (expected <root>/train/NNN/... or test/...)"
    if len(parts) != 3 or not (folder_match := _FOLDER.fullmatch(parts[1])):
        return "not in a writer folder (expected train/NNN/ or train/NNN_forg/)"
    writer, in_forg = folder_match.group("writer"), folder_match.group("forg") is not None
    name = parts[2]
    genuine = next((m for p in _GENUINE if (m := p.fullmatch(name))), None)
    forged = next((m for p in _FORGED if (m := p.fullmatch(name))), None)
    if genuine is None and forged is None:
        return "unexpected file name (expected WWW_NN, NN_WWW, FFFFWWW_NN or NN_FFFFWWW)"
    m = forged if in_forg else genuine
    if m is None:
        kind = "forgery" if in_forg else "genuine"
        return f"name of a {'genuine signature' if in_forg else 'forgery'} in a {kind} folder"
    if m.group("writer") != writer:
        return f"file name says writer {m.group('writer')} but the folder says {writer}"
    forger = int(m.group("forger")) if in_forg else common.UNKNOWN_FORGER
    return real.SourceImage(rel, writer, not in_forg, forger, split=parts[0])


def find_root(manual_dir: epath.PathLike) -> epath.Path:
    """The `sign_data` folder (the one holding train/ and test/), given it, its parent
    `sigcomp2011/`, or the folder holding that."""
    manual_dir = epath.Path(manual_dir)
    tried = [
        manual_dir,
        manual_dir / "sign_data",
        manual_dir / "sigcomp2011",
        manual_dir / "sigcomp2011" / "sign_data",
        manual_dir / "sign_data" / "sign_data",
    ]
    for candidate in tried:
        if (candidate / "train").is_dir():
            return candidate
    raise UserError(
        f"{manual_dir}: no SigComp2011 sign_data here (looked for train/ in "
        f"{', '.join(str(t) for t in tried)})"
    )


def list_files(root: epath.PathLike) -> real.Listing:
    """Every image under the sign_data root, classified, as the builder enumerates them."""
    return real.scan(root, classify)


def test_duplicates(listing: real.Listing) -> tuple[int, int]:
    """(test images whose bytes repeat a train image, test images)."""
    hashes = real.content_hashes(listing.root, listing.images)
    train = {hashes[im.relpath] for im in listing.split("train")}
    test = listing.split("test")
    return sum(hashes[im.relpath] in train for im in test), len(test)


class Builder(real.RealBuilder):
    """SigComp2011 Dutch offline signatures (Kaggle layout), normalised at build time."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download Kaggle's "Signature Verification Dataset" (the `sign_data` folder of SigComp2011's
    Dutch offline signatures, e.g. robinreni/signature-verification-dataset) and unzip it so
    that the manual dir (--config.data_dir, or SIAMJAX_DATA_DIR) holds
    sigcomp2011/sign_data/train/NNN/... (or sign_data/train/..., or train/... directly).
    """
    DESCRIPTION = (
        "ICDAR 2011 SigComp Dutch offline signatures in Kaggle's sign_data layout: 64 writers, "
        "genuine signatures and skilled forgeries; test/ repeats train/ images."
    )
    HOMEPAGE = "https://www.kaggle.com/datasets/robinreni/signature-verification-dataset"
    BUILDER_CONFIGS = [real.ImageConfig.of(150, 220)]
    WHAT = "SigComp2011 sign_data"
    find_root = staticmethod(find_root)
    list_files = staticmethod(list_files)

    def _after_listing(self, listing: real.Listing) -> None:
        repeated, total = test_duplicates(listing)
        logging.info(
            "sigcomp2011: %d of %d test/ images repeat a train/ image byte for byte (Kaggle's "
            "split leaks: split train's writers instead and drop duplicates by sha256)",
            repeated,
            total,
        )
        counts = collections.Counter((im.split, im.is_genuine) for im in listing.images)
        logging.info(
            "sigcomp2011: train %d genuine / %d forged, test %d / %d",
            counts["train", True],
            counts["train", False],
            counts["test", True],
            counts["test", False],
        )
