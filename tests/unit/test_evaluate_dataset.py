"""Whole-scene evaluation (``evaluate_dataset``, ``python -m app evaluate``): every scene pixel
counted once on the stitched scene, checked against masks whose scores are known by hand."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from app import build, cli, config
from app.data.base import DatasetError, Scene
from app.data.dataset import TileDataset, write_dataset
from app.ml import evaluate as scoring
from app.ml.inference import ModelService, ResultCache

TILE = 32
OVERLAP = 8
#: (height, width) of the scenes: A has overlapping edge tiles, B is smaller than a tile
#: (reflect-padded into one tile).
SHAPES = {"a": (56, 80), "b": (24, 20)}


def _rects(shape: tuple[int, int], rects: list[tuple[int, int, int, int]]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for y0, y1, x0, x1 in rects:
        out[y0:y1, x0:x1] = True
    return out


def _known() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(truth, prediction) per scene, with building outcomes known by construction.

    Scene a: T1 (crosses tile borders) found exactly, T3 found with IoU 0.8, T2 missed, P1 a
    false alarm → building TP 2, FP 1, FN 1. Scene b: one found exactly and one false alarm
    (whose reflection lands in the padding) → TP 1, FP 1.
    """
    a_true = _rects(SHAPES["a"], [(5, 15, 20, 40), (30, 40, 60, 70), (40, 50, 30, 45)])
    a_pred = _rects(SHAPES["a"], [(5, 15, 20, 40), (40, 50, 33, 45), (45, 52, 5, 15)])
    b_true = _rects(SHAPES["b"], [(2, 8, 2, 8)])
    b_pred = _rects(SHAPES["b"], [(2, 8, 2, 8), (15, 20, 12, 18)])
    return {"a": (a_true, a_pred), "b": (b_true, b_pred)}


def _scene(name: str, truth: np.ndarray, pred: np.ndarray, source: str, meta: dict) -> Scene:
    """The image's red channel is the prediction of :func:`red_model` (255 = building)."""
    image = np.zeros((*truth.shape, 3), np.uint8)
    image[..., 0] = pred * 255
    image[..., 1] = 90
    return Scene(name, source, image, truth.astype(np.uint8), [], meta)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    known = _known()
    scenes = [_scene("scene-a", *known["a"], "xbd", {"disaster": "flood", "phase": "pre"}),
              _scene("scene-b", *known["b"], "folder", {"phase": "post"})]
    out = tmp_path_factory.mktemp("evaluate") / "ds"
    return write_dataset(scenes, out, name="known", source="mixed", tile_size=TILE,
                         overlap=OVERLAP, fractions=(1.0, 0.0, 0.0), progress=False)


@pytest.fixture(scope="module")
def red_model() -> ModelService:
    """A 1×1 convolution whose output is the red channel / 255: a prediction set by the image."""
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(1, 1)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.array([1 / 255, 0, 0], np.float32).reshape(1, 1, 3, 1),
                      np.zeros(1, np.float32)])
    return ModelService(model=model, cache=ResultCache())


@pytest.fixture(scope="module")
def score(red_model: ModelService, dataset: Path) -> scoring.DatasetScore:
    return scoring.evaluate_dataset(red_model, dataset, splits=("train",))


def test_every_scene_pixel_is_counted_once(score: scoring.DatasetScore, dataset: Path) -> None:
    table = TileDataset.open(dataset).table
    assert len(table) == 3 * 2 + 1  # overlapping edge tiles in a, one padded tile in b
    assert "reflect from 20x24" in str(table.loc[table["scene_id"] == "scene-b", "padded"].iloc[0])
    pixels = sum(h * w for h, w in SHAPES.values())
    assert score.n_pixels == pixels == int(score.positive.sum() + score.negative.sum())
    by_scene = dict(zip(score.scene_ids, score.scene_positive.sum(1) + score.scene_negative.sum(1),
                        strict=True))
    assert by_scene == {"scene-a": 56 * 80, "scene-b": 24 * 20}
    assert score.shapes == [SHAPES["a"], SHAPES["b"]] and score.n_tiles == 7
    assert sum(score.tile_sum.values()) == 7 * TILE * TILE > pixels  # what summing tiles counts


def test_scores_equal_a_computation_by_hand(score: scoring.DatasetScore) -> None:
    known = _known()
    truth = np.concatenate([t.ravel() for t, _ in known.values()])
    pred = np.concatenate([p.ravel() for _, p in known.values()])
    tp, fp, fn = (int(v) for v in ((truth & pred).sum(), (~truth & pred).sum(),
                                   (truth & ~pred).sum()))
    got = score.scores(0.5)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, truth.size - tp - fp - fn)
    assert got["precision"] == pytest.approx(tp / (tp + fp))
    assert got["recall"] == pytest.approx(tp / (tp + fn))
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert got["iou"] == pytest.approx(tp / (tp + fp + fn))
    b = got["building"]
    assert (b["tp"], b["fp"], b["fn"]) == (3, 2, 1) and b["threshold"] == 0.5
    assert b["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # summing the tiles counts the overlaps and the padding again, and gets another F1
    tile = score.tile_sum
    assert tile["fp"] > fp and tile["tp"] > tp
    # the page's summaries read the same counts
    assert scoring.pixel_summary(score, 0.5)["tp"] == tp
    assert scoring.building_summary(score, 0.5)["tp"] == 3


def test_breakdowns_per_source_disaster_and_phase(score: scoring.DatasetScore) -> None:
    d = score.to_dict()
    json.dumps(d)  # plain JSON types
    assert set(d["by_source"]) == {"xbd", "folder"}
    assert set(d["by_disaster"]) == {"flood", "unknown"}
    assert set(d["by_phase"]) == {"pre", "post"}
    a = d["by_phase"]["pre"]
    assert a["scenes"] == 1 and a["pixels"] == 56 * 80
    assert (a["building"]["tp"], a["building"]["fp"], a["building"]["fn"]) == (2, 1, 1)
    assert d["counts"] == {"scenes": 2, "tiles": 7, "pixels": 56 * 80 + 24 * 20, "skipped": 0}
    assert [s["scene_id"] for s in d["scenes"]] == ["scene-a", "scene-b"]
    assert sum(v["tp"] for v in d["by_source"].values()) == d["overall"]["tp"]
    text = "\n".join(score.summary_lines())
    for word in ("overall", "by source", "by disaster", "by phase", "flood", "each counted once"):
        assert word in text


def test_bad_input_names_what_was_expected(red_model: ModelService, dataset: Path,
                                           tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'splits' parameter must name some of"):
        scoring.evaluate_dataset(red_model, dataset, splits=("tset",))
    with pytest.raises(ValueError, match=r"no tiles in splits \['test'\]; the dataset has train"):
        scoring.evaluate_dataset(red_model, dataset)
    with pytest.raises(DatasetError, match="does not exist"):
        scoring.evaluate_dataset(red_model, tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest.json: missing"):
        scoring.evaluate_dataset(red_model, tmp_path / "empty")


def test_cli_prints_the_table_and_writes_json(dataset: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "deep" / "scores.json"
    rc = cli.main(["evaluate", "--model-run", config.DEMO_MODEL_RUN, "--dataset", str(dataset),
                   "--splits", "train", "--json", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "overall" in text and "by phase" in text and f"scores written to {out}" in text
    saved = json.loads(out.read_text())
    assert saved["format"] == scoring.SCORE_FORMAT and saved["model_run"] == config.DEMO_MODEL_RUN
    assert saved["counts"]["pixels"] == 56 * 80 + 24 * 20 and saved["splits"] == ["train"]
    direct = scoring.evaluate_dataset(config.DEMO_MODEL_RUN, dataset, splits=["train"]).to_dict()
    assert saved["overall"] == direct["overall"]
    assert f"{direct['overall']['f1']:.3f}" in text
    assert not list(out.parent.glob("*.tmp*"))  # written through a temp file


@pytest.mark.parametrize(("argv", "message"), [
    (["--model-run", "no-such-model"], "Unknown model run 'no-such-model'"),
    (["--dataset", "/nonexistent/dataset"], "does not exist"),
    (["--splits", "tset"], "'splits' parameter must name some of"),
    (["--splits", "test"], "no tiles in splits ['test']"),
])
def test_cli_errors(dataset: Path, argv: list[str], message: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--model-run": config.DEMO_MODEL_RUN, "--dataset": str(dataset), "--splits": "train"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    rc = cli.main(["evaluate", *itertools.chain(*base.items()), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_page_scores_scenes_with_the_same_function(dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An embeddings run whose dataset is on disk: the page's scene scores are the CLI's."""
    from app import artifacts
    from app.ml.inference import get_service
    from app.pipeline import run_embed
    from app.web.logic import evaluate as ev

    monkeypatch.setattr(config, "DATASETS_DIR", dataset.parent)
    run_embed(config.DEMO_MODEL_RUN, dataset, "scenes-run", embeddings_root=tmp_path,
              progress=False)
    run = artifacts.EmbeddingsRun.open("scenes-run", tmp_path)
    assert cli._held_out_lines(run.path) == ["no held-out tiles with ground truth: no metrics"]
    found = ev.scene_source(run)
    assert found is not None and found[1:] == (None, 7)  # no test split: every scene
    page = ev.run_scene_evaluation(run, get_service(config.DEMO_MODEL_RUN))
    cli_score = scoring.evaluate_dataset(config.DEMO_MODEL_RUN, dataset, splits=None)
    assert page.to_dict()["overall"] == cli_score.to_dict()["overall"]
    rows = {r["phase"]: r for r in ev.scene_group_rows(page, 0.5, "phase")}
    assert rows["pre"]["tiles"] == 1 and rows["pre"]["px_f1"] == cli_score.breakdown("phase")[
        "pre"]["f1"]


@pytest.mark.realdata
def test_real_xbd_scenes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = config.SHARED_DATA / "xbd"
    if not (root / "images").is_dir():
        pytest.skip(f"real xBD data not found at {root} (see ../shared/data)")
    from app.data.xbd import iter_xbd

    scenes = list(itertools.islice(iter_xbd(root), 2))
    if len(scenes) < 2:
        pytest.skip(f"fewer than 2 readable xBD scenes in {root}")
    scenes = list(build.downscaled(scenes, 2))  # 512², as `make xbd` tiles them
    ds = write_dataset(scenes, tmp_path / "xbd2", name="xbd2", source="xbd", tile_size=256,
                       overlap=64, progress=False)
    out = tmp_path / "xbd.json"
    rc = cli.main(["evaluate", "--model-run", config.DEMO_MODEL_RUN, "--dataset", str(ds),
                   "--splits", "train", "val", "test", "--json", str(out), "--quiet"])
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert rc == 0 and "overall" in text
    assert saved["counts"]["pixels"] == sum(s.image.shape[0] * s.image.shape[1] for s in scenes)
    assert set(saved["by_source"]) == {"xbd"} and set(saved["by_phase"]) <= {"pre", "post"}
    assert set(saved["by_disaster"]) == {str(s.meta["disaster"]) for s in scenes}
    assert 0.0 <= saved["overall"]["f1"] <= 1.0
    assert saved["tile_sum"]["tp"] + saved["tile_sum"]["fp"] + saved["tile_sum"]["fn"] + \
        saved["tile_sum"]["tn"] > saved["counts"]["pixels"]  # overlapping tiles, counted again


def test_embed_prints_the_held_out_metrics(tmp_path: Path) -> None:
    """``embed`` ends with the held-out (test) tiles' scores from the counts it stored."""
    from app import artifacts
    from tests.fixture_run import make_fixture_run

    run_id = make_fixture_run(tmp_path, n=30, seed=2, run_id="held-out")
    tiles = artifacts.EmbeddingsRun.open(run_id, tmp_path, check_model=False).tiles
    test = tiles[tiles["split"] == "test"]
    tp, fp, fn = (int(test[k].sum()) for k in ("tp", "fp", "fn"))
    lines = cli._held_out_lines(tmp_path / run_id)
    assert lines[0].startswith(f"held-out test tiles ({len(test)}, at threshold 0.5)")
    assert f"F1 {2 * tp / (2 * tp + fp + fn):.3f}" in lines[0]
    assert "python -m app evaluate" in lines[1]


def test_embed_command_ends_with_the_held_out_line(dataset: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", tmp_path)
    rc = cli.main(["embed", "--model-run", config.DEMO_MODEL_RUN, "--dataset", str(dataset),
                   "--run-id", "printed"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and lines[-2] == f"embeddings written to {tmp_path / 'printed'}"
    assert lines[-1] == "no held-out tiles with ground truth: no metrics"  # a train-only dataset
