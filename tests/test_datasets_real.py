"""Tests of the real-data TFDS builders (sigcomp2011, cedar, signature_folder).

On made-up dummy data: TFDS's own builder checks, and every kind of bad input (corrupt, truncated,
empty or unexplained files, writers without a genuine signature, empty folders, patterns that match
nothing) stopping the build with an error that names the file or rule, or being skipped and
reported with `skip_bad_files`. On the real data ($SIAMJAX_DATA_DIR, skipped without it): the
known counts of SigComp2011 and CEDAR, Kaggle's leaking test split, and full builds.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from siamjax.datasets import cedar, real, sigcomp2011, signature_folder
from siamjax.datasets.signature_folder import signature_folder_dataset_builder as folder_lib
from siamjax.errors import UserError

SMALL = (32, 48)  # Image size of the dummy builds: the checks do not need more pixels.
BHSIG = r"Bengali/(?P<writer>\d+)/B-S-(?P=writer)-(?P<kind>[GF])-\d+\.tif"
DATASETS = pathlib.Path(real.__file__).parent


# ---- TFDS's builder checks on dummy_data -------------------------------------------------------


class Sigcomp2011Test(tfds.testing.DatasetBuilderTestCase):
    """Kaggle layout, both naming schemes, test/ copying train/, csv and Thumbs.db ignored."""

    DATASET_CLASS = sigcomp2011.Builder
    SPLITS = {"train": 7, "test": 2}
    BUILDER_CONFIG_NAMES_TO_TEST = [real.ImageConfig.of(*SMALL)]
    SKIP_CHECKSUMS = True


class CedarTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = cedar.Builder
    SPLITS = {"train": 5}
    BUILDER_CONFIG_NAMES_TO_TEST = [real.ImageConfig.of(*SMALL)]
    SKIP_CHECKSUMS = True


class SignatureFolderTest(tfds.testing.DatasetBuilderTestCase):
    """A BHSig260-like layout of TIFF files; the builder has no predefined config."""

    DATASET_CLASS = signature_folder.Builder
    SPLITS = {"train": 5}
    SKIP_CHECKSUMS = True

    def _make_builder(self, config=None):
        config = config or signature_folder.FolderConfig.create(
            root="", pattern=BHSIG, height=SMALL[0], width=SMALL[1], folder_name="bhsig"
        )
        return self.dataset_class(data_dir=self.tmp_dir, config=config, version=self.VERSION)


# ---- Helpers ------------------------------------------------------------------------------------


def fake_image(path: pathlib.Path, seed: int) -> None:
    """A made-up signature (two random strokes), never a real scan; format from the suffix."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (96, 64), 235)
    draw = ImageDraw.Draw(im)
    t = np.linspace(0, 1, 30)
    for _ in range(2):
        a, b = rng.uniform(1, 4, 2)
        pts = np.stack([10 + 76 * t, 32 + 18 * np.sin(a * 6 * t + b)], -1)
        draw.line([tuple(p) for p in pts], fill=int(rng.integers(30, 90)), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def build(builder, manual_dir) -> tfds.core.DatasetBuilder:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def records(builder, split: str = "train") -> list[dict]:
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def sign_data(tmp_path) -> pathlib.Path:
    """A writable copy of sigcomp2011's dummy sign_data."""
    dst = tmp_path / "raw" / "sign_data"
    shutil.copytree(DATASETS / "sigcomp2011/dummy_data/sign_data", dst)
    return dst


def sigcomp(tmp_path, skip: bool = False):
    tfds_dir = str(tmp_path / "tfds")
    return sigcomp2011.Builder.for_size(*SMALL, data_dir=tfds_dir, skip_bad_files=skip)


def report(builder) -> dict:
    return json.loads(builder.report_path.read_text())


# ---- Bad input: an error that names the file, or a report -------------------------------------


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100), "not a readable"),
    ],
    ids=["truncated", "zero_bytes", "corrupt"],
)
def test_bad_image_stops_the_build_naming_the_file(tmp_path, sign_data, damage, expected):
    bad = sign_data / "train/021/02_021.png"
    damage(bad)
    builder = sigcomp(tmp_path)
    with pytest.raises(UserError, match=rf"train/021/02_021.png: {expected}") as err:
        build(builder, sign_data.parent)
    assert "skip_bad_files" in str(err.value) and "\n" not in str(err.value)
    assert not builder.data_path.exists()  # Nothing half-built is left to be reused.


def test_skip_bad_files_skips_and_reports(tmp_path, sign_data):
    (sign_data / "train/021/02_021.png").write_bytes(b"")
    fake_image(sign_data / "train/001/scan_of_something.png", 1)
    builder = build(sigcomp(tmp_path, skip=True), sign_data.parent)
    assert builder.builder_config.name == "32x48_skip"  # Never mistaken for a complete build.
    paths = {text(r["path"]) for r in records(builder)}
    assert len(paths) == 6 and "train/021/02_021.png" not in paths  # 7 in train, 1 bad.
    rep = report(builder)
    assert rep["num_skipped"] == 2
    reasons = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert "empty file" in reasons["train/021/02_021.png"]
    assert "unexpected file name" in reasons["train/001/scan_of_something.png"]
    assert builder.report_path.parent == builder.data_path


def test_unexpected_name_and_place_are_errors(tmp_path, sign_data):
    fake_image(sign_data / "train/001/001_01_copy.png", 2)
    with pytest.raises(UserError, match="train/001/001_01_copy.png: unexpected file name"):
        build(sigcomp(tmp_path), sign_data.parent)
    (sign_data / "train/001/001_01_copy.png").unlink()
    fake_image(sign_data / "train/021/01_0110021.png", 3)  # A forgery's name among genuine ones.
    with pytest.raises(UserError, match="train/021/01_0110021.png: name of a forgery"):
        build(sigcomp(tmp_path), sign_data.parent)
    (sign_data / "train/021/01_0110021.png").unlink()
    fake_image(sign_data / "train/021/03_022.png", 4)
    with pytest.raises(UserError, match="says writer 022 but the folder says 021"):
        build(sigcomp(tmp_path), sign_data.parent)
    (sign_data / "train/021/03_022.png").unlink()
    fake_image(sign_data / "extra/001_01.png", 5)
    with pytest.raises(UserError, match="extra/001_01.png: image outside train/ and test/"):
        build(sigcomp(tmp_path), sign_data.parent)


def test_writer_without_genuine_is_an_error_or_skipped(tmp_path, sign_data):
    fake_image(sign_data / "train/030_forg/01_0101030.PNG", 6)
    with pytest.raises(UserError, match="030_forg/01_0101030.PNG: writer '030' has no genuine"):
        build(sigcomp(tmp_path), sign_data.parent)
    builder = build(sigcomp(tmp_path, skip=True), sign_data.parent)
    assert {text(r["writer"]) for r in records(builder)} == {"001", "021"}
    assert [s["path"] for s in report(builder)["skipped"]] == ["train/030_forg/01_0101030.PNG"]


def test_writer_whose_genuine_images_are_all_bad_loses_its_forgeries(tmp_path, sign_data):
    for name in ("001_01.PNG", "001_02.PNG"):
        (sign_data / "train/001" / name).write_bytes(b"broken")
    builder = build(sigcomp(tmp_path, skip=True), sign_data.parent)
    assert {text(r["writer"]) for r in records(builder)} == {"021"}
    reasons = {s["path"]: s["reason"] for s in report(builder)["skipped"]}
    assert set(reasons) == {
        "train/001/001_01.PNG",
        "train/001/001_02.PNG",
        "train/001_forg/0119001_01.png",
    }
    assert "none of its genuine signatures is readable" in reasons["train/001_forg/0119001_01.png"]


def test_blank_page_is_an_error_naming_it(tmp_path, sign_data):
    Image.new("L", (80, 50), 250).save(sign_data / "train/001/001_02.PNG")
    with pytest.raises(UserError, match="train/001/001_02.PNG: no ink found"):
        build(sigcomp(tmp_path), sign_data.parent)


@pytest.mark.parametrize("skip", [False, True])
def test_empty_folder_is_always_an_error(tmp_path, skip):
    (tmp_path / "raw/cedar/full_org").mkdir(parents=True)
    (tmp_path / "raw/cedar/full_org/notes.txt").write_text("no images here")
    builder = cedar.Builder.for_size(*SMALL, data_dir=str(tmp_path / "tfds"), skip_bad_files=skip)
    with pytest.raises(UserError, match="no usable signature image"):
        build(builder, tmp_path / "raw")


def test_every_image_bad_is_an_error_even_when_skipping(tmp_path):
    fake = tmp_path / "raw/cedar/full_org"
    fake.mkdir(parents=True)
    for name in ("original_1_1.png", "forgeries_1_1.png"):
        (fake.parent / name).write_bytes(b"")
    builder = cedar.Builder.for_size(*SMALL, data_dir=str(tmp_path / "tfds"), skip_bad_files=True)
    with pytest.raises(UserError, match="no image of this split was usable"):
        build(builder, tmp_path / "raw")


def test_cedar_flat_folder_and_its_checks(tmp_path):
    flat = tmp_path / "raw/cedar"
    for w in (1, 2):
        for n in (1, 2):
            fake_image(flat / f"original_{w}_{n}.png", 10 * w + n)
            fake_image(flat / f"forgeries_{w}_{n}.png", 100 + 10 * w + n)
    (flat / "Thumbs.db").write_bytes(b"\x00junk")
    builder = cedar.Builder.for_size(*SMALL, data_dir=str(tmp_path / "tfds"))
    builder = build(builder, tmp_path / "raw")
    rows = records(builder)
    assert len(rows) == 8 and sum(r["is_genuine"] for r in rows) == 4
    assert {text(r["writer"]) for r in rows} == {"1", "2"}
    assert all(r["forger"] == -1 for r in rows)
    # The same signature twice (flat copy beside the official folder) and a misplaced file.
    fake_image(flat / "full_org/original_1_1.png", 7)
    fake_image(flat / "full_org/forgeries_2_2.png", 8)
    listing = cedar.list_files(flat)
    problems = {p.path: p.reason for p in listing.problems}
    assert "the same signature" in problems["original_1_1.png"]
    assert "inside full_org/" in problems["full_org/forgeries_2_2.png"]


def test_signature_folder_pattern_checks(tmp_path):
    def make(**kwargs):
        args = dict(root="", pattern=BHSIG, height=32, width=48, data_dir=str(tmp_path))
        return signature_folder.make_builder(**{**args, **kwargs})

    with pytest.raises(UserError, match="not a valid regular expression"):
        make(pattern=r"(?P<writer>\d+")
    with pytest.raises(UserError, match=r"lacks the named group\(s\) \['kind'\]"):
        make(pattern=r"(?P<writer>\d+)/.*")
    with pytest.raises(UserError, match="share"):
        make(genuine_values="G,F", forged_values="F")
    with pytest.raises(UserError, match="folder_name"):
        make(folder_name="my folder/..")
    # Different roots or patterns prepare into different folders; the same ones into the same.
    names = {
        make().builder_config.name,
        make(root="other").builder_config.name,
        make(pattern=BHSIG.replace("tif", "png")).builder_config.name,
        make(height=64).builder_config.name,
    }
    assert len(names) == 4 and make().builder_config.name == make().builder_config.name
    assert make(folder_name="bhsig").builder_config.name.startswith("bhsig_32x48_")


def test_signature_folder_gpds_like_layout_with_forger_and_bad_files(tmp_path):
    root = tmp_path / "raw/gpds"
    for w in ("001", "002"):
        fake_image(root / w / f"c-{w}-01.jpg", int(w))
        fake_image(root / w / f"cf-{w}-01.jpg", 50 + int(w))
    fake_image(root / "001/x-001-02.jpg", 9)  # Matches no rule.
    (root / "002/readme.txt").write_text("ignored")
    # The NN of forgeries read as the forger id, to check the optional group.
    pattern = r"(?P<writer>\d{3})/(?P<kind>c|cf)-(?P=writer)-(?P<forger>\d+)\.jpg"
    args = dict(
        root=str(root),
        pattern=pattern,
        height=32,
        width=48,
        data_dir=str(tmp_path),
        genuine_values="c",
        forged_values="cf",
        folder_name="gpds",
    )
    with pytest.raises(UserError, match="001/x-001-02.jpg: matches no rule"):
        build(signature_folder.make_builder(**args), tmp_path)
    builder = build(signature_folder.make_builder(**args, skip_bad_files=True), tmp_path)
    rows = records(builder)
    assert len(rows) == 4
    assert {(text(r["writer"]), bool(r["is_genuine"]), int(r["forger"])) for r in rows} == {
        ("001", True, -1),
        ("001", False, 1),
        ("002", True, -1),
        ("002", False, 1),
    }
    assert [s["path"] for s in report(builder)["skipped"]] == ["001/x-001-02.jpg"]


# The README's examples, as the classifier reads them: (pattern, genuine, forged, path -> result).
README_EXAMPLES = [
    (
        BHSIG,
        "G",
        "F",
        {
            "Bengali/1/B-S-1-G-01.tif": ("1", True),
            "Bengali/12/B-S-12-F-30.tif": ("12", False),
            "Bengali/1/B-S-2-G-01.tif": None,
            "Hindi/1/H-S-1-G-01.tif": None,
        },
    ),
    (
        r"(?:Bengali|Hindi)/\d+/(?P<writer>[BH]-S-\d+)-(?P<kind>[GF])-\d+\.tif",
        "G",
        "F",
        {
            "Bengali/1/B-S-1-G-01.tif": ("B-S-1", True),
            "Hindi/160/H-S-160-F-30.tif": ("H-S-160", False),
        },
    ),
    (
        r"(?:.*/)?(?P<writer>\d+)/B-S-(?P=writer)-(?P<kind>[GF])-\d+\.tif",
        "G",
        "F",
        {"BHSig260-Bengali/BHSig260-Bengali/7/B-S-7-G-01.tif": ("7", True)},
    ),
    (
        r"(?P<writer>\d+)/(?P<kind>c|cf)-(?P=writer)-\d+\.jpg",
        "c",
        "cf",
        {
            "001/c-001-01.jpg": ("001", True),
            "001/cf-001-30.jpg": ("001", False),
            "001/cf-002-30.jpg": None,
        },
    ),
    (
        r"(?P<kind>Genuine|Forgery/Skilled|Forgery/Simple|Forgery/Opposite)/(?P<writer>\d+)/\d+\.tif",
        "Genuine",
        "Forgery/Skilled,Forgery/Simple,Forgery/Opposite",
        {"Genuine/1/1.tif": ("1", True), "Forgery/Skilled/115/42.tif": ("115", False)},
    ),
]


@pytest.mark.parametrize("pattern,genuine,forged,cases", README_EXAMPLES)
def test_readme_example_patterns(pattern, genuine, forged, cases):
    """The README's patterns say what it claims, and are the README's (kept in step)."""
    classify = folder_lib.folder_classifier(pattern, genuine, forged)
    for path, expected in cases.items():
        result = classify(path)
        if expected is None:
            assert isinstance(result, str) and result.startswith(folder_lib.NO_MATCH), path
        else:
            assert (result.writer, result.is_genuine) == expected, path
    readme = (DATASETS / "signature_folder/README.md").read_text().replace("\\|", "|")
    assert pattern in readme


@pytest.mark.parametrize("skip", [False, True])
def test_signature_folder_pattern_matching_nothing_is_always_an_error(tmp_path, skip):
    builder = signature_folder.make_builder(
        root="",
        pattern=BHSIG.replace("Bengali", "Hindi"),
        height=32,
        width=48,
        data_dir=str(tmp_path),
        skip_bad_files=skip,
    )
    with pytest.raises(UserError, match=r"pattern .*Hindi.* matched none of the 5 image files"):
        build(builder, DATASETS / "signature_folder/dummy_data")


def test_signature_folder_unknown_kind_value(tmp_path):
    builder = signature_folder.make_builder(
        root="",
        pattern=BHSIG,
        height=32,
        width=48,
        data_dir=str(tmp_path),
        genuine_values="G",
        forged_values="X",
    )
    with pytest.raises(UserError, match="B-S-1-F-01.tif: kind 'F' is in neither"):
        build(builder, DATASETS / "signature_folder/dummy_data")


def test_kaggle_pairs_invert_the_target(sign_data):
    train = sigcomp2011.read_kaggle_pairs(sign_data, "train")
    assert train == [
        sigcomp2011.KagglePair("train/001/001_01.PNG", "train/001_forg/0119001_01.png", 0),
        sigcomp2011.KagglePair("train/021/01_021.png", "train/021/02_021.png", 1),
    ]
    test = sigcomp2011.read_kaggle_pairs(sign_data, "test")  # No header in test_data.csv.
    assert test == [
        sigcomp2011.KagglePair("test/021/01_021.png", "test/021_forg/01_0110021.PNG", 0)
    ]
    (sign_data / "test_data.csv").write_text("021/01_021.png,021/02_021.png,1\na,b,2\n")
    with pytest.raises(UserError, match="test_data.csv:2: expected img1,img2,target"):
        sigcomp2011.read_kaggle_pairs(sign_data, "test")


def test_root_is_found_from_parent_folders(tmp_path, sign_data):
    assert sigcomp2011.find_root(sign_data.parent) == sign_data
    assert sigcomp2011.find_root(sign_data) == sign_data
    with pytest.raises(UserError, match="no SigComp2011 sign_data"):
        sigcomp2011.find_root(tmp_path)
    (tmp_path / "raw/cedar/full_forg").mkdir(parents=True)
    assert cedar.find_root(tmp_path / "raw") == tmp_path / "raw/cedar"
    assert cedar.find_root(tmp_path / "raw/cedar") == tmp_path / "raw/cedar"


# ---- Real data ---------------------------------------------------------------------------------


@pytest.mark.realdata
def test_sigcomp2011_real_counts_and_leak(real_data_dir):
    """The counts the datasets README states, from the builder's own listing (no decoding)."""
    listing = sigcomp2011.list_files(sigcomp2011.find_root(real_data_dir))
    assert listing.problems == []
    train = listing.split("train")
    assert len({im.writer for im in train}) == 64
    assert sum(im.is_genuine for im in train) == 887
    assert sum(not im.is_genuine for im in train) == 762
    test_writers = {im.writer for im in listing.split("test")}
    assert test_writers == {f"{w:03d}" for w in range(49, 70)}
    repeated, total = sigcomp2011.sigcomp2011_dataset_builder.test_duplicates(listing)
    assert total > 0 and repeated == total  # Every test/ image is a copy of a train/ image.
    # Forger ids come from both naming schemes.
    forgers = {im.forger for im in train if not im.is_genuine}
    assert -1 not in forgers and {119, 110} <= forgers


@pytest.mark.realdata
def test_sigcomp2011_real_originals_parse(real_data_dir):
    """The files exactly as users have them (RGB, both schemes) list without a problem."""
    listing = sigcomp2011.list_files(real_data_dir / "originals/sigcomp2011")
    assert listing.problems == [] and len(listing.images) == 56
    assert {im.writer for im in listing.images} == {"001", "021"}


@pytest.mark.realdata
def test_kaggle_pairs_real(real_data_dir):
    root = sigcomp2011.find_root(real_data_dir)
    kinds = {im.relpath: im.is_genuine for im in sigcomp2011.list_files(root).images}
    for split, rows in (("train", 23206), ("test", 5748)):
        pairs = sigcomp2011.read_kaggle_pairs(root, split)
        assert len(pairs) == rows
        # Our label 1 exactly when both images are genuine: Kaggle's target inverted.
        assert all(p.label == int(kinds[p.path1] and kinds[p.path2]) for p in pairs)


@pytest.mark.realdata
def test_cedar_real_counts(real_data_dir):
    listing = cedar.list_files(cedar.find_root(real_data_dir))
    assert listing.problems == []
    per_writer = {}
    for im in listing.images:
        per_writer.setdefault(im.writer, [0, 0])[0 if im.is_genuine else 1] += 1
    assert len(per_writer) == 55 and set(map(tuple, per_writer.values())) == {(24, 24)}


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["sigcomp2011", "cedar"])
def test_real_full_build_150x220(real_data_dir, tmp_path, name):
    """End to end at the model's size; measured on 2 cores: sigcomp2011 ~10 s, cedar ~15 s."""
    module = {"sigcomp2011": sigcomp2011, "cedar": cedar}[name]
    start = time.perf_counter()
    builder = build(module.Builder.for_size(150, 220, data_dir=str(tmp_path)), real_data_dir)
    elapsed = time.perf_counter() - start
    data = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    images, genuine = data["image"], data["is_genuine"]
    assert images.shape[1:] == (150, 220, 1) and images.dtype == np.uint8
    writers = {text(w) for w in data["writer"]}
    if name == "sigcomp2011":
        assert (len(writers), int(genuine.sum()), int((~genuine).sum())) == (64, 887, 762)
        test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
        assert set(map(text, test["sha256"])) <= set(map(text, data["sha256"]))
    else:
        assert (len(writers), int(genuine.sum()), int((~genuine).sum())) == (55, 1320, 1320)
    # Normalised: background 0 in the corners, ink high, every image has ink.
    assert (images[:, 0, 0, 0] == 0).mean() > 0.95
    assert (images.reshape(len(images), -1).max(axis=1) > 100).all()
    assert elapsed < 120, elapsed


def test_ink_mode_is_part_of_the_prepared_datasets_identity(tmp_path):
    flat = tmp_path / "raw/cedar"
    for w in (1, 2):
        fake_image(flat / f"original_{w}_1.png", 10 * w)
        fake_image(flat / f"forgeries_{w}_1.png", 100 + 10 * w)
    tfds_dir = str(tmp_path / "tfds")
    raw = build(cedar.Builder.for_size(*SMALL, data_dir=tfds_dir), tmp_path / "raw")
    binary = build(
        cedar.Builder.for_size(*SMALL, data_dir=tfds_dir, ink="binary"), tmp_path / "raw"
    )
    assert raw.builder_config.name == f"{SMALL[0]}x{SMALL[1]}"  # Raw datasets keep their name.
    assert binary.builder_config.name.endswith("_ink-binary")
    assert raw.data_dir != binary.data_dir
    raw_images = np.stack([r["image"] for r in records(raw)])
    binary_images = np.stack([r["image"] for r in records(binary)])
    assert len(np.unique(raw_images)) > 2
    assert set(np.unique(binary_images)) == {0, 255}
