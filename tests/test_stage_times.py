"""demo/stage_times.py: the recipe's stage times summed and written for a complete run only."""

from demo import stage_times

HEAD = "stage\tseconds\tended\thow\n"


def write(path, lines):
    path.write_text(HEAD + "".join(f"{s}\t{n}\t2026-01-01T00:00:00Z\t{how}\n" for s, n, how in lines))
    return str(path)


def test_sums_sittings_per_stage_in_order(tmp_path):
    times = stage_times.read_times(
        write(tmp_path / "t.tsv", [("tokenizer", 4, "finished"), ("gpt", 800, "killed"), ("gpt", 100, "stopped")])
    )
    assert list(times) == ["tokenizer", "gpt"]
    assert times["gpt"].seconds == 900 and not times["gpt"].finished
    assert stage_times.sittings_text(times["gpt"]) == "2 (1 killed, 1 stopped)"
    assert stage_times.duration(4) == "4 s" and stage_times.duration(754) == "12 min 34 s"
    assert stage_times.duration(3725) == "1 h 02 min"


def test_malformed_file_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "t.tsv"
    bad.write_text(HEAD + "gpt\tmany\tx\tfinished\n")
    assert stage_times.main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad} line 2" in err
    assert stage_times.main([str(tmp_path / "missing.tsv")]) == 1


def test_results_written_only_for_a_complete_run(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    partial = write(tmp_path / "p.tsv", [(s, 10, "finished") for s in stage_times.STAGES[:-1]])
    assert stage_times.main([partial, "--write-results", str(results)]) == 0
    assert not results.exists() and "not finished: eval" in capsys.readouterr().err
    whole = [(s, 10, "finished") for s in stage_times.STAGES] + [("gpt", 3600, "killed")]
    assert stage_times.main([write(tmp_path / "w.tsv", whole), "--write-results", str(results)]) == 0
    text = results.read_text()
    assert f"## {stage_times.SECTION}" in text and "Machine:" in text
    assert "| gpt | 1 h 00 min | 2 (1 killed) |" in text and "| total | 1 h 01 min | |" in text
