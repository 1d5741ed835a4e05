"""publish: the run's answer copied for the front page, with the record of the run that measured it."""

from __future__ import annotations

from lmship.publish import publish, rule_times

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, seconds, rss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t1\n")


def test_rule_times_sum_each_rules_jobs(tmp_path):
    bench = tmp_path / "benchmarks"
    _bench(bench / "tflite" / "m_seq_fp32.tsv", 120.0, 8000)
    _bench(bench / "tflite" / "m_seq_fp16.tsv", 60.0, 9000)
    _bench(bench / "summary.tsv", 3.0, "NA")
    rows = {r["rule"]: r for r in rule_times(bench)}
    assert rows["tflite"] == {"rule": "tflite", "jobs": 2, "seconds": 180.0, "max_rss_mb": 9000}
    assert rows["summary"]["jobs"] == 1 and rows["summary"]["max_rss_mb"] == 0.0
    assert [r["rule"] for r in rule_times(bench)] == ["tflite", "summary"]  # longest first


def test_publish_copies_the_files_and_writes_the_run_record(tmp_path):
    bench = tmp_path / "benchmarks"
    _bench(bench / "export_onnx" / "m.tsv", 90.0, 4100)
    made = tmp_path / "results"
    made.mkdir()
    (made / "summary.md").write_text("| table |\n")
    (made / "ship.png").write_bytes(b"\x89PNG fake")
    out = publish(
        [made / "summary.md", made / "ship.png"], tmp_path / "docs" / "results", benchmarks=bench, facts={"models": "m"}
    )
    assert (out / "summary.md").read_text() == "| table |\n"
    assert (out / "ship.png").read_bytes() == b"\x89PNG fake"
    record = (out / "run.md").read_text()
    assert "| `export_onnx` | 1 | 1.5 | 4.0 |" in record, record
    assert "- models: m" in record and "logical CPUs" in record
    assert not list(out.glob(".*partial*"))
