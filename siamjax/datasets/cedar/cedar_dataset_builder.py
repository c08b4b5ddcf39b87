"""cedar: the CEDAR signature database, in its official layout or as one flat folder.

Files are recognised by name alone, `original_W_N.png` (genuine) and `forgeries_W_N.png` (skilled
forgery of writer W), so both `full_org/` + `full_forg/` and a single folder holding both kinds
work. One split, `train`, with every image: writer-disjoint splits are `siamjax.pairs`' job.

Not for decoding (`siamjax.preprocess`) nor for what all real builders share (listing, checks,
thread pool, skip report, the builder base: `siamjax.datasets.real`).
"""

from __future__ import annotations

import re

from etils import epath

from siamjax.datasets import real
from siamjax.errors import UserError

_NAME = re.compile(
    r"(?P<kind>original|forgeries)_(?P<writer>\d+)_(?P<n>\d+)\.(?:png|jpe?g|tiff?|bmp)",
    re.IGNORECASE,
)
_WRONG_FOLDER = {"full_org": "forgeries", "full_forg": "original"}


def classifier() -> real.Classifier:
    """Classifies by file name; a signature named twice (e.g. in full_org/ and in a flat copy)
    or a forgery inside full_org/ (an original inside full_forg/) is a problem."""
    seen: dict[tuple[str, str, int], str] = {}

    def classify(rel: str) -> real.SourceImage | str:
        parts = rel.split("/")
        m = _NAME.fullmatch(parts[-1])
        if m is None:
            return "unexpected file name (expected original_W_N.png or forgeries_W_N.png)"
        kind, writer = m.group("kind").lower(), str(int(m.group("writer")))
        if len(parts) > 1 and _WRONG_FOLDER.get(parts[-2].lower()) == kind:
            return f"a file named {kind}_... inside {parts[-2]}/"
        identity = (kind, writer, int(m.group("n")))
        if identity in seen:
            return f"the same signature ({kind} {writer}/{identity[2]}) as {seen[identity]}"
        seen[identity] = rel
        return real.SourceImage(rel, writer, kind == "original")

    return classify


def find_root(manual_dir: epath.PathLike) -> epath.Path:
    """The folder holding full_org/ and full_forg/ (given it, its parent, or the official
    zip's `signatures/`), else `manual_dir/cedar/` if present, else `manual_dir` itself (flat)."""
    manual_dir = epath.Path(manual_dir)
    candidates = [
        manual_dir,
        manual_dir / "cedar",
        manual_dir / "signatures",
        manual_dir / "cedar" / "signatures",
    ]
    for candidate in candidates:
        if (candidate / "full_org").is_dir() or (candidate / "full_forg").is_dir():
            return candidate
    if (manual_dir / "cedar").is_dir():
        return manual_dir / "cedar"
    if not manual_dir.is_dir():
        raise UserError(f"{manual_dir}: no such folder (expected CEDAR's full_org/, full_forg/)")
    return manual_dir


def list_files(root: epath.PathLike) -> real.Listing:
    """Every image under the CEDAR root, classified, as the builder enumerates them."""
    return real.scan(root, classifier())


class Builder(real.RealBuilder):
    """CEDAR offline signatures: 55 writers x 24 genuine + 24 skilled forgeries."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Get CEDAR's signature archive (from https://cedar.buffalo.edu/NIJ/ or a mirror) and unpack
    it so that the manual dir (--config.data_dir, or SIAMJAX_DATA_DIR) holds
    cedar/full_org/original_W_N.png and cedar/full_forg/forgeries_W_N.png (a single folder with
    both kinds of files works too).
    """
    DESCRIPTION = (
        "CEDAR offline signature database: 55 writers, 24 genuine signatures and 24 skilled "
        "forgeries each, scanned at 300 dpi."
    )
    HOMEPAGE = "https://cedar.buffalo.edu/NIJ/"
    BUILDER_CONFIGS = [real.ImageConfig.of(150, 220)]
    WHAT = "CEDAR"
    find_root = staticmethod(find_root)
    list_files = staticmethod(list_files)
