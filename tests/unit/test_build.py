"""``python -m app build``: a tiny synthetic build end to end, a rerun that skips every step, a
changed input that redoes exactly the steps that read it, ``--model-run``, a failed step that
keeps the earlier results, clear errors, the serve command serving the run, and (slow) a build
on the shared xBD scenes.

Step states are read from what ``run_build`` returns and prints, never from timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from app import artifacts, cli, config
from app.build import STEPS, BuildConfig, BuildResult, run_build
from tests.serving import free_port, serve_env, server_process, wait_for

TRAIN = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "crop": 32, "patience": 1}


def _cfg(run_id: str = "tiny", **kw) -> BuildConfig:
    """Six synthetic 128² scenes in 64² tiles (24 tiles), two training steps, PCA only."""
    base = dict(source="synthetic", run_id=run_id, n_locations=3, scene_size=128, tile_size=64,
                train=dict(TRAIN), batch_size=4, methods=("pca",), k_min=2, k_max=3,
                progress=False)
    return BuildConfig(**{**base, **kw})


class Env:
    """The three stores of a test build, and ``build`` with its printed lines kept."""

    def __init__(self, root: Path) -> None:
        self.datasets, self.models, self.emb = root / "datasets", root / "models", root / "emb"
        self.lines: list[str] = []

    def build(self, cfg: BuildConfig) -> BuildResult:
        self.lines = []
        return run_build(cfg, datasets_dir=self.datasets, model_store=self.models,
                         embeddings_root=self.emb, out=self.lines.append)

    def printed_states(self) -> dict[str, str]:
        """Each step's state from the printed ``build [i/5] step: state: ...`` lines."""
        states = {}
        for line in self.lines:
            for step in STEPS:
                prefix = f"build [{STEPS.index(step) + 1}/{len(STEPS)}] {step}: "
                if line.startswith(prefix):
                    word = line[len(prefix):].split(":")[0]
                    states[step] = "ran" if word == "running" or word.startswith("done in") \
                        else "failed" if word.startswith("failed") else word
        return states


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def first(env: Env) -> tuple[BuildResult, list[str], str]:
    """The first build of ``tiny``: every step runs; its progress output (stderr, not a
    terminal here) is kept."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = env.build(_cfg(progress=True))
    return result, list(env.lines), err.getvalue()


def _stamp(path: Path, step: str) -> dict:
    stamp = artifacts.build_stamp(json.loads((path / "manifest.json").read_text()), step)
    assert stamp is not None, f"no build record of {step} in {path}"
    return stamp


def test_first_build_runs_every_step_and_records_its_inputs(env: Env, first) -> None:
    result, lines, _ = first
    assert result.states() == dict.fromkeys(STEPS, "ran")
    dataset, model = env.datasets / "tiny", env.models / "tiny"
    emb = env.emb / "tiny-bottleneck"
    assert result.dataset_path == dataset and result.embeddings_run == "tiny-bottleneck"
    assert _stamp(dataset, "dataset")["inputs"]["params"]["tile_size"] == 64
    assert _stamp(model, "train")["inputs"]["config"]["steps_per_epoch"] == 2
    sha = artifacts.verify_model_file("tiny", env.models)[1]
    assert _stamp(emb, "embed")["inputs"]["model_sha256"] == sha
    manifest = json.loads((emb / "manifest.json").read_text())
    assert _stamp(emb, "reduce")["inputs"]["vectors_sha256"] == manifest["files"]["vectors.npy"]
    assert _stamp(emb, "evaluate")["inputs"]["splits"] == ["test"]
    overall = manifest["evaluation"]["scores"]["overall"]
    assert 0.0 <= overall["f1"] <= 1.0 and "building" in overall
    # The summary: scores, where the run is, the command that serves it.
    text = "\n".join(lines)
    assert "build tiny finished" in text and f"{emb}" in text
    assert "every pixel once" in text and "building F1" in text
    assert lines[-1] == f"serve it:     {result.serve_command}"
    assert "--embeddings-run tiny-bottleneck --model-run tiny" in result.serve_command


def test_every_step_shows_progress_and_training_a_line_before_its_epoch_ends(first) -> None:
    """stderr is no terminal here: training writes a plain line after its first step (of 2),
    with the steps done of the whole run, the ETA and the loss; the other steps show bars."""
    _, _, err = first
    step_line = next(line for line in err.splitlines() if "train: epoch 1/1 step 1/2" in line)
    assert "1/2 steps of the run" in step_line and "run ETA at most" in step_line
    assert "loss" in step_line
    assert step_line.startswith("train:")  # a line of its own, not inside a bar
    for bar in ("tiling tiny", "embed bottleneck/gap", "reduce tiny-bottleneck",
                "evaluate test"):
        assert bar in err


def test_rerun_skips_every_step(env: Env, first) -> None:
    result = env.build(_cfg())
    assert result.states() == dict.fromkeys(STEPS, "skipped")
    assert env.printed_states() == dict.fromkeys(STEPS, "skipped")
    assert all("inputs unchanged" in s.reason for s in result.steps)


def test_a_reduce_parameter_redoes_reduce_only(env: Env, first) -> None:
    result = env.build(_cfg(k_max=4))
    assert result.states() == {"dataset": "skipped", "train": "skipped", "embed": "skipped",
                               "reduce": "ran", "evaluate": "skipped"}
    assert "k_values" in next(s.reason for s in result.steps if s.name == "reduce")
    reduce = json.loads((env.emb / "tiny-bottleneck" / "manifest.json").read_text())["reduce"]
    assert reduce["params"]["k_values"] == [2, 3, 4]


def test_model_run_skips_training_and_a_dataset_change_redoes_what_reads_it(env: Env,
                                                                          first) -> None:
    models_before = sorted(p.name for p in env.models.iterdir())
    cfg = _cfg("given", model_run="tiny")
    result = env.build(cfg)
    assert result.states() == {"dataset": "ran", "train": "given", "embed": "ran",
                               "reduce": "ran", "evaluate": "ran"}
    assert "--model-run tiny" in result.serve_command
    assert sorted(p.name for p in env.models.iterdir()) == models_before  # nothing trained
    # A dataset parameter: the dataset and everything that reads it is redone.
    result = env.build(replace(cfg, overlap=16))
    assert result.states() == {"dataset": "ran", "train": "given", "embed": "ran",
                               "reduce": "ran", "evaluate": "ran"}
    assert "params" in result.steps[0].reason
    emb = json.loads((env.emb / "given-bottleneck" / "manifest.json").read_text())
    assert emb["counts"]["tiles"] == 6 * 9  # six 128² scenes of 3 x 3 overlapping 64² tiles
    # An embed parameter: embed, and the steps whose records live in the embeddings run.
    result = env.build(replace(cfg, overlap=16, embed_limit=10))
    assert result.states() == {"dataset": "skipped", "train": "given", "embed": "ran",
                               "reduce": "ran", "evaluate": "ran"}


def test_a_failed_step_keeps_the_earlier_results_and_the_rerun_resumes(env: Env, first,
                                                                      capsys) -> None:
    cfg = _cfg("broken", model_run="tiny", k=50)  # 24 tiles: K-means cannot make 50 clusters
    with pytest.raises(ValueError, match="K-means needs k <= 23"):
        env.build(cfg)
    assert env.printed_states() == {"dataset": "ran", "train": "given", "embed": "ran",
                                    "reduce": "failed"}
    err = capsys.readouterr().err
    assert "step reduce failed" in err and "resumes at reduce" in err
    _stamp(env.datasets / "broken", "dataset")
    emb = env.emb / "broken-bottleneck"
    _stamp(emb, "embed")
    assert artifacts.build_stamp(json.loads((emb / "manifest.json").read_text()),
                                 "reduce") is None
    result = env.build(replace(cfg, k=None))
    assert result.states() == {"dataset": "skipped", "train": "given", "embed": "skipped",
                               "reduce": "ran", "evaluate": "ran"}


def test_a_dataset_without_test_tiles_is_scored_on_val(env: Env, first) -> None:
    """Four scenes are two locations: train and val only. The default test split becomes val
    (as training's own held-out score does), and the build says so."""
    result = env.build(_cfg("few", model_run="tiny", limit=4))
    assert result.states()["evaluate"] == "ran"
    assert any(line.endswith("the dataset has no test tiles: scoring the val split instead")
               for line in env.lines)
    manifest = json.loads((env.emb / "few-bottleneck" / "manifest.json").read_text())
    assert manifest["evaluation"]["splits"] == ["val"]
    assert "val split" in next(line for line in env.lines if line.startswith("  scores "))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_clear_errors_before_any_step(env: Env, first, tmp_path: Path, monkeypatch,
                                      capsys) -> None:
    monkeypatch.setattr(config, "MODEL_STORE", env.models)
    monkeypatch.setattr(config, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.setattr(config, "EMBEDDINGS_DIR", tmp_path / "emb")
    base = ["build", "--run-id", "x"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--source", "landsat"])
    assert exc.value.code == 2
    assert "invalid choice: 'landsat'" in capsys.readouterr().err

    code, err = _cli([*base, "--source", "xbd"], capsys)
    assert code == 2 and "--root is required for --source xbd" in err
    code, err = _cli([*base, "--source", "folder", "--root", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such folder" in err and "images/ and masks/" in err
    (tmp_path / "empty").mkdir()
    code, err = _cli([*base, "--source", "xbd", "--root", str(tmp_path / "empty")], capsys)
    assert code == 2 and "images" in err and "labels" in err
    code, err = _cli([*base, "--source", "synthetic", "--model-run", "nope"], capsys)
    assert code == 2 and "--model-run 'nope': no such model run" in err and "tiny" in err
    code, err = _cli([*base, "--source", "synthetic", "--model-run", "../tiny"], capsys)
    assert code == 2 and "--model-run" in err and "run id" in err
    code, err = _cli(["build", "--source", "synthetic", "--run-id", "a/b"], capsys)
    assert code == 2 and "--run-id" in err

    # A run no build made (trained by hand, imported) is never replaced without --overwrite.
    hand = env.models / "by-hand"
    hand.mkdir()
    (hand / "manifest.json").write_text(json.dumps({"format": artifacts.MODEL_FORMAT}))
    code, err = _cli(["build", "--source", "synthetic", "--run-id", "by-hand"], capsys)
    assert code == 2 and "was not made by `build`" in err and "--model-run by-hand" in err
    assert not (tmp_path / "datasets").exists()  # nothing was written
    assert json.loads((hand / "manifest.json").read_text()) == {"format": artifacts.MODEL_FORMAT}


def test_the_serve_command_serves_the_run(env: Env, first, tmp_path: Path) -> None:
    """Start exactly what the summary prints (plus a free port) and ask /healthz."""
    result, _, _ = first
    words = shlex.split(result.serve_command)
    assigned = dict(w.split("=", 1) for w in words if "=" in w and w.startswith("UNET_LENS_"))
    argv = [w for w in words if w not in {f"{k}={v}" for k, v in assigned.items()}]
    assert argv[:4] == ["python", "-m", "app", "serve"]
    assert set(assigned) == {"UNET_LENS_MODEL_STORE", "UNET_LENS_EMBEDDINGS",
                             "UNET_LENS_DATASETS"}
    port = free_port()
    proc_env = serve_env(Path(assigned["UNET_LENS_MODEL_STORE"]),
                         Path(assigned["UNET_LENS_EMBEDDINGS"]), tmp_path / "cache", port,
                         UNET_LENS_DATASETS=assigned["UNET_LENS_DATASETS"])
    with server_process([sys.executable, *argv[1:], "--port", str(port)], proc_env,
                        tmp_path / "serve.log") as proc:
        _, body = wait_for(f"http://127.0.0.1:{port}/healthz", proc=proc)
    health = json.loads(body)
    assert health["embeddings"]["run"] == "tiny-bottleneck"
    assert health["model"]["run"] == "tiny"
    assert health["embeddings"]["tiles"] == 24


def test_demo_is_build_with_the_demos_runs_and_parameters() -> None:
    """``make demo`` / ``python -m app demo``: the same run ids and parameters as before."""
    args = cli.build_parser().parse_args(["build", *cli.DEMO_BUILD_ARGS])
    assert (args.run_id, args.dataset_name, args.embeddings_run) == (
        config.DEMO_MODEL_RUN, "demo-synthetic", config.DEMO_EMBEDDINGS_RUN)
    assert (args.source, args.n_locations, args.scene_size, args.tile_size, args.seed) == (
        "synthetic", 20, 1024, 256, 0)
    assert (args.preset, args.epochs, args.max_minutes, args.patience, args.crop,
            args.batch_size, args.lr) == ("light", 40, 20.0, 8, 128, 8, 1e-3)
    assert (args.layer, args.representation, args.splits, args.methods, args.k_min,
            args.k_max, args.k) == ("bottleneck", "gap", None, None, 2, 10, None)


XBD = config.SHARED_DATA / "xbd"


@pytest.mark.slow
@pytest.mark.skipif(not (XBD / "images").is_dir(),
                    reason=f"the shared xBD scenes are not at {XBD} (never committed)")
def test_build_on_the_shared_xbd_scenes(tmp_path: Path) -> None:
    """Six real scenes (three locations), quartered to 256², a two-step model, every step."""
    env = Env(tmp_path)
    cfg = BuildConfig(source="xbd", root=XBD, run_id="xbd-tiny", limit=6, downscale=4,
                      tile_size=128, train=dict(TRAIN, crop=64), batch_size=4,
                      methods=("pca",), k_max=3, progress=False)
    result = env.build(cfg)
    assert result.states() == dict.fromkeys(STEPS, "ran")
    data = json.loads((tmp_path / "datasets" / "xbd-tiny" / "manifest.json").read_text())
    assert data["source"] == "xbd" and data["counts"]["scenes"] == 6
    assert data["counts"]["tiles"] == 6 * 4
    scores = json.loads((tmp_path / "emb" / "xbd-tiny-bottleneck" / "manifest.json")
                        .read_text())["evaluation"]["scores"]
    assert scores["counts"]["scenes"] >= 1 and "by_disaster" in scores
    assert env.build(cfg).states() == dict.fromkeys(STEPS, "skipped")


def test_demo_command_runs_build_with_those_flags_and_overwrite(monkeypatch) -> None:
    """``python -m app demo`` hands exactly DEMO_BUILD_ARGS (+ --overwrite: the committed demo
    runs carry no build record) to ``build``; the build itself is not run here (20 min)."""
    import app.build

    seen: list[BuildConfig] = []
    monkeypatch.setattr(app.build, "run_build", lambda cfg: seen.append(cfg))
    assert cli.main(["demo"]) == 0
    (cfg,) = seen
    assert cfg.overwrite and cfg.model_run is None and cfg.layer == "bottleneck"
    assert (cfg.run_id, cfg.dataset_id, cfg.embeddings_id) == (
        config.DEMO_MODEL_RUN, "demo-synthetic", config.DEMO_EMBEDDINGS_RUN)
    assert cfg.train == {"preset": "light", "epochs": 40, "batch_size": 8,
                         "learning_rate": 1e-3, "patience": 8, "crop": 128,
                         "steps_per_epoch": None, "max_minutes": 20.0}
    assert cfg.methods is None and (cfg.k_min, cfg.k_max, cfg.k) == (2, 10, None)


def test_step_records_compare_inputs_by_value(tmp_path: Path) -> None:
    """``artifacts.stamp_step`` / ``step_state``: key order does not matter, values do; an
    unreadable or missing record means the step runs."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"format": "x", "counts": {"tiles": 3}}))
    inputs = {"b": [1, 2], "a": {"y": 1, "x": Path("/data")}}
    assert artifacts.step_state({}, "dataset", inputs) == "unrecorded"
    done = artifacts.stamp_step(manifest, "dataset", inputs, "test manifest")
    assert done["counts"] == {"tiles": 3}  # the rest of the manifest is kept
    again = json.loads(manifest.read_text())
    assert artifacts.step_state(again, "dataset", {"a": {"x": "/data", "y": 1}, "b": [1, 2]}) \
        == "unchanged"
    assert artifacts.step_state(again, "dataset", {**inputs, "b": [1, 3]}) == "changed"
    assert artifacts.changed_inputs(again, "dataset", {**inputs, "b": [1, 3]}) == ["b"]
    assert artifacts.step_state(again, "train", inputs) == "unrecorded"
