"""Snakemake adapter: lmship.compress_openvino.compress_openvino, into the rule's artifact folder."""

from pathlib import Path

from lmship import StageError
from lmship.backends import refuse_if_not_applicable
from lmship.compress_openvino import calibration_windows, compress_openvino, needs_calibration
from lmship.records import METRICS, artifact_in, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    refuse_if_not_applicable(f"openvino_{smk.wildcards.compression}", Path(smk.input.hf))
    compression = smk.wildcards.compression
    calibration = None
    if needs_calibration(compression):
        if smk.wildcards.graph != "seq":
            raise StageError(
                f"{compression} calibrates on forward-pass token windows; it is made for the forward graph "
                f"(seq), not for the {smk.wildcards.graph} graph"
            )
        calibration = calibration_windows(
            Path(smk.input.model),
            Path(smk.input.text),
            Path(smk.input.inputs),
            seq_len=int(smk.wildcards.seq),
            count=smk.params.calibration_samples,
        )
    compress_openvino(
        artifact_in(smk.input.ir),
        out / "model.xml",
        compression,
        calibration,
        census_json=out / "ops.json",
        metrics_json=out / METRICS,
    )


run_job(smk, work, inputs=[smk.input.ir])
