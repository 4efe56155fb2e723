"""``gpu``: whether TensorFlow sees a GPU here. GPU figures are measured only on a machine that
has one; otherwise the report says they are still to be measured."""

from __future__ import annotations

from bench.common import Report, Table, gpu_description, run_child


def devices_child() -> dict:
    import tensorflow as tf

    return {"gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "built_with_cuda": bool(tf.test.is_built_with_cuda()),
            "tensorflow": tf.__version__}


def run(quick: bool = False) -> Report:
    report = Report("gpu", "gpu: accelerator check")
    r = run_child("bench.gpu:devices_child", {})
    t = Table("GPU", ["check", "result"])
    t.add("`nvidia-smi -L`", gpu_description())
    t.add("`tf.config.list_physical_devices('GPU')`", ", ".join(r["gpus"]) or "none")
    t.add("TensorFlow built with CUDA", f"{r['built_with_cuda']} (tensorflow {r['tensorflow']})")
    if not r["gpus"]:
        t.notes.append("GPU figures still to be measured: no GPU on this machine.")
    else:
        t.notes.append("TensorFlow sees a GPU: run `python -m bench extract model` on it for "
                       "the GPU figures.")
    report.tables.append(t)
    return report
