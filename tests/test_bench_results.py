"""Every bench/results/*.json follows one schema (bench/_common.py): top level exactly benchmark, commit,
version, torch, machine, date, config, rows; machine with platform, processor, cpu_count, threads,
build, gpu; rows flat dicts. write_results produces it and refuses anything else."""
import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FILES = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json")))


def test_there_are_results_to_check():
    names = {os.path.basename(p) for p in RESULT_FILES}
    assert {"bench_topk.json", "bench_map.json", "bench_train_step.json", "gpu_topk.json"} <= names


@pytest.mark.parametrize("path", RESULT_FILES, ids=os.path.basename)
def test_results_file_follows_the_schema(path, bench_common):
    with open(path) as f:
        doc = json.load(f)
    assert bench_common.schema_problems(doc) == []
    assert list(doc) == ["benchmark", "commit", "version", "torch", "machine", "date", "config", "rows"]
    assert doc["benchmark"] == os.path.basename(path)[: -len(".json")]
    assert doc["rows"], "a committed results file holds measurements"


def test_write_results_writes_the_schema(tmp_path, bench_common):
    bench_common.parser("a benchmark").parse_args([])
    rows = [{"method": "nhl_fast", "bits": [8, 16], "N": 10, "min_s": 0.5, "ok": True, "note": None}]
    path = bench_common.write_results("bench_x", {"config": {"Q": 3}, "rows": rows})
    doc = json.loads(open(path).read())
    assert list(doc) == list(bench_common.TOP_LEVEL)
    assert set(doc["machine"]) == set(bench_common.MACHINE)
    assert doc["config"] == {"Q": 3} and doc["rows"] == rows and doc["benchmark"] == "bench_x"
    import nhl_fast
    import torch

    assert doc["version"] == nhl_fast.__version__ and doc["torch"] == torch.__version__
    assert doc["machine"]["threads"] == torch.get_num_threads()
    # the form every script uses, and the smallest one
    bench_common.write_results("bench_y", {"rows": []})
    assert json.loads((tmp_path / "bench_y.json").read_text())["config"] == {}
    bench_common.write_results("bench_z", {"rows": [{"k": 1}]}, gpu={"gpu": "a card", "sms": 2})
    assert json.loads((tmp_path / "bench_z.json").read_text())["machine"]["gpu"] == {"gpu": "a card", "sms": 2}


@pytest.mark.parametrize("payload, words", [
    ({"config": {}, "rows": [], "ratios": []}, "ratios"),  # no other top-level key
    ({"config": {}}, "rows"),
    ({"config": {}, "rows": [{"ours": {"median_s": 1.0}}]}, "rows[0]['ours']"),  # nested: not a flat row
    ({"config": {}, "rows": [{"bits": [[1], [2]]}]}, "rows[0]['bits']"),
    ({"config": {}, "rows": [{}]}, "rows[0]"),
    ({"config": {}, "rows": ["x"]}, "rows[0]"),
    ({"config": [], "rows": []}, "config must be a dict"),
    ({"config": {}, "rows": {"a": 1}}, "rows must be a list"),
])
def test_write_results_rejects_other_layouts(tmp_path, bench_common, payload, words):
    bench_common.parser("a benchmark").parse_args([])
    with pytest.raises(ValueError, match="bench_bad") as e:
        bench_common.write_results("bench_bad", payload)
    assert words in str(e.value)
    assert os.listdir(tmp_path) == []


def test_schema_problems_names_what_is_wrong(bench_common):
    good = {"benchmark": "b", "commit": "abc", "version": "0.1.0", "torch": "2.13", "date": "d",
            "machine": {k: None for k in bench_common.MACHINE}, "config": {}, "rows": [{"a": 1}]}
    good = {k: good[k] for k in bench_common.TOP_LEVEL}
    assert bench_common.schema_problems(good) == []
    reordered = {"rows": good["rows"], **{k: v for k, v in good.items() if k != "rows"}}
    assert "in this order" in bench_common.schema_problems(reordered)[0]
    assert "machine" in bench_common.schema_problems({**good, "machine": {"platform": "x"}})[0]
    assert "commit" in bench_common.schema_problems({**good, "commit": 3})[0]
    assert bench_common.schema_problems([]) == ["a results document is a dict, got list"]


def test_flatten_makes_nested_figures_columns(bench_common):
    assert bench_common.flatten({"k": 1, "ours": {"median_s": 2.0, "x": {"y": [1]}}}) == {
        "k": 1, "ours_median_s": 2.0, "ours_x_y": [1]}
