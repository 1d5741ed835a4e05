"""Snakemake adapter: lmship.export_onnx.export_onnx of the rule's {graph}, into its artifact folder."""

from pathlib import Path

from lmship.export_onnx import export_onnx
from lmship.gate import gate_inputs
from lmship.records import METRICS, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    checked = gate_inputs(smk)
    export_onnx(
        Path(smk.input.model),
        checked.pop("inputs_npz"),
        checked.pop("reference_npy"),
        out / "model.onnx",
        graph=checked.pop("graph"),
        host_npz=checked.pop("host_npz"),
        length=int(smk.wildcards.seq),
        opset=smk.params.opset,
        metrics_json=out / METRICS,
        **{k: v for k, v in checked.items() if k != "hf_dir"},
    )


run_job(smk, work)
