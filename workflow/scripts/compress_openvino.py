"""Snakemake adapter: lmship.openvino.compress_openvino."""

from pathlib import Path

from lmship import StageError
from lmship.logs import log_to
from lmship.openvino import calibration_windows, compress_openvino, needs_calibration

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
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
        Path(smk.input.ir),
        Path(smk.output.xml),
        compression,
        calibration,
        census_json=Path(smk.output.census),
        metrics_json=Path(smk.output.metrics),
    )
