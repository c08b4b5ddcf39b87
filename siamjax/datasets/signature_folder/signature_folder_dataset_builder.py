"""signature_folder: any folder of signature scans, described by one regular expression.

The builder's config names a root and a pattern: a Python `re` regular expression matched
with `re.fullmatch` against each image's POSIX path relative to the root (so "a/b.png", never
"./a/b.png" nor an absolute path), with named groups `writer`, `kind` and optionally `forger`.
`kind` must equal one of the comma-separated `genuine_values` or `forged_values`. Prefix the
pattern with `(?i)` to ignore case, or with `.*` to match only the end of the path. The root is
absolute, or relative to the manual dir (`--config.data_dir`).

Only what is particular to this layout lives here; listing, checks, preprocessing and the builder
base are `siamjax.datasets.real`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import tensorflow_datasets as tfds
from etils import epath

from siamjax.datasets import common, real
from siamjax.errors import UserError

DEFAULT_GENUINE = "G,g,genuine,org,original"
DEFAULT_FORGED = "F,f,forged,forg,forgery,forgeries"
NO_MATCH = "matches no rule"  # How problems of files that no rule explains begin.


def _values(text: str, key: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise UserError(f"{key}={text!r}: give at least one comma-separated value")
    return values


@dataclasses.dataclass(eq=False)
class FolderConfig(real.ImageConfig):
    """A root, a pattern and the values of its `kind` group; see the module docstring."""

    root: str = ""
    pattern: str = ""
    genuine_values: str = DEFAULT_GENUINE
    forged_values: str = DEFAULT_FORGED
    folder_name: str = "folder"

    @classmethod
    def create(
        cls,
        *,
        root: str,
        pattern: str,
        height: int,
        width: int,
        genuine_values: str = DEFAULT_GENUINE,
        forged_values: str = DEFAULT_FORGED,
        folder_name: str = "folder",
        skip_bad_files: bool = False,
        ink: str = "raw",
    ) -> FolderConfig:
        """Validated config named `<folder_name>_<h>x<w>[_skip]_<hash>`: the hash (of root,
        pattern and values) keeps prepared copies of different folders or rules apart."""
        real.check_size(height, width)
        compile_pattern(pattern)
        genuine, forged = (
            _values(genuine_values, "genuine_values"),
            _values(forged_values, "forged_values"),
        )
        if set(genuine) & set(forged):
            raise UserError(
                f"genuine_values and forged_values share {sorted(set(genuine) & set(forged))}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_]{1,40}", folder_name or ""):
            raise UserError(f"folder_name={folder_name!r}: use 1-40 letters, digits or underscores")
        key = json.dumps([root, pattern, ",".join(genuine), ",".join(forged)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return cls(
            name=f"{folder_name}_{real.size_name(height, width, skip_bad_files, ink)}_{digest}",
            description=f"{root!r} matched by {pattern!r} at {height}x{width}",
            height=int(height),
            width=int(width),
            skip_bad_files=bool(skip_bad_files),
            ink=ink,
            root=root,
            pattern=pattern,
            genuine_values=",".join(genuine),
            forged_values=",".join(forged),
            folder_name=folder_name,
        )


def compile_pattern(pattern: str) -> re.Pattern:
    """The pattern, checked: it compiles and has the named groups `writer` and `kind`."""
    if not pattern:
        raise UserError("pattern is empty: give a regular expression with groups writer, kind")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UserError(f"pattern {pattern!r} is not a valid regular expression: {e}") from e
    missing = {"writer", "kind"} - set(compiled.groupindex)
    if missing:
        raise UserError(
            f"pattern {pattern!r} lacks the named group(s) {sorted(missing)}: write e.g. "
            r"(?P<writer>\d+)/(?P<kind>[GF])-\d+\.png"
        )
    return compiled


def folder_classifier(pattern: str, genuine_values: str, forged_values: str) -> real.Classifier:
    """Classifier of the folder builder: `re.fullmatch` on the relative path."""
    compiled = compile_pattern(pattern)
    genuine = set(_values(genuine_values, "genuine_values"))
    forged = set(_values(forged_values, "forged_values"))

    def classify(rel: str) -> real.SourceImage | str:
        m = compiled.fullmatch(rel)
        if m is None:
            return f"{NO_MATCH} (pattern {pattern!r}, matched with re.fullmatch)"
        writer, kind = m.group("writer"), m.group("kind")
        if not writer:
            return f"pattern {pattern!r} gives an empty writer"
        if kind in genuine:
            is_genuine = True
        elif kind in forged:
            is_genuine = False
        else:
            return (
                f"kind {kind!r} is in neither genuine_values ({','.join(sorted(genuine))}) "
                f"nor forged_values ({','.join(sorted(forged))})"
            )
        forger = common.UNKNOWN_FORGER
        if "forger" in compiled.groupindex and m.group("forger") and not is_genuine:
            if not m.group("forger").isdigit():
                return f"forger {m.group('forger')!r} is not a number"
            forger = int(m.group("forger"))
        return real.SourceImage(rel, writer, is_genuine, forger)

    return classify


def folder_listing(root: epath.PathLike, config: FolderConfig) -> real.Listing:
    """What the folder builder would build from `root`, per `config`; a pattern that matches no
    image at all is always an error (it is a wrong pattern, not a few bad files)."""
    classify = folder_classifier(config.pattern, config.genuine_values, config.forged_values)
    listing = real.scan(root, classify)
    unmatched = [p for p in listing.problems if p.reason.startswith(NO_MATCH)]
    if listing.problems and not listing.images and len(unmatched) == len(listing.problems):
        examples = ", ".join(p.path for p in unmatched[:3])
        raise UserError(
            f"pattern {config.pattern!r} matched none of the {len(listing.problems)} image "
            f"files under {listing.root} (e.g. {examples}); it is matched with re.fullmatch "
            "against paths relative to the root, like 'Bengali/1/B-S-1-G-01.tif'"
        )
    return listing


class Builder(real.RealBuilder):
    """Signatures in any folder layout, described by a FolderConfig (no predefined configs)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the signature images anywhere and set the config's `root` (absolute, or relative to the
    manual dir, i.e. --config.data_dir) and `pattern`, e.g. for BHSig260's Bengali part:
    root='BHSig260', pattern='Bengali/(?P<writer>\\d+)/B-S-(?P=writer)-(?P<kind>[GF])-\\d+\\.tif'.
    """
    DESCRIPTION = (
        "Offline signatures from a user's folder, classified by a regular expression on each "
        "file's relative path; images normalised by siamjax.preprocess."
    )
    BUILDER_CONFIGS: list[FolderConfig] = []
    WHAT = "signature"

    def __init__(self, *, config: FolderConfig | str | None = None, **kwargs):
        if not isinstance(config, FolderConfig):
            raise UserError(
                "signature_folder needs a FolderConfig (root, pattern, values): build it with "
                "siamjax.datasets.signature_folder.make_builder(...)"
            )
        super().__init__(config=config, **kwargs)

    def _citation(self) -> str | None:
        return None  # Cite the dataset the folder holds; CITATIONS.bib lists the README's examples.

    def _listing(self, dl_manager: tfds.download.DownloadManager) -> real.Listing:
        config = self.builder_config
        if config.root and epath.Path(config.root).is_absolute():
            # No manual dir is asked for: TFDS's default one need not exist (or be non-empty).
            return folder_listing(epath.Path(config.root), config)
        manual = real.manual_dir(dl_manager)
        return folder_listing(manual / config.root if config.root else manual, config)


def make_builder(
    *,
    root: str,
    pattern: str,
    height: int,
    width: int,
    data_dir: str,
    genuine_values: str = DEFAULT_GENUINE,
    forged_values: str = DEFAULT_FORGED,
    folder_name: str = "folder",
    skip_bad_files: bool = False,
    ink: str = "raw",
) -> Builder:
    """The folder builder for one root and pattern, preparing into `data_dir` (TFDS's folder).

    `root` is absolute, or relative to the manual dir given to `download_and_prepare`.
    """
    config = FolderConfig.create(
        root=root,
        pattern=pattern,
        height=height,
        width=width,
        genuine_values=genuine_values,
        forged_values=forged_values,
        folder_name=folder_name,
        skip_bad_files=skip_bad_files,
        ink=ink,
    )
    return Builder(config=config, data_dir=data_dir)
