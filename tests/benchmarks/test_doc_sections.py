"""Two writers of one benchmark document keep each other's text (benchmarks.doc_sections)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.doc_sections import markers, replace_section, section, write_section


def test_each_writer_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "sub" / "doc.md"
    write_section(doc, "run", "# Title\n\nrun table v1")
    write_section(doc, "peers", "## Peers\n\npeers table v1")
    doc.write_text(doc.read_text() + "\nhand-written note\n")
    write_section(doc, "run", "# Title\n\nrun table v2")
    text = doc.read_text()
    assert section(text, "run") == "# Title\n\nrun table v2"
    assert section(text, "peers") == "## Peers\n\npeers table v1"
    assert "hand-written note" in text and "v1" not in text.split(markers("peers")[0])[0]
    assert text.index(markers("run")[1]) < text.index(markers("peers")[0])
    # writing the same again changes nothing
    write_section(doc, "run", "# Title\n\nrun table v2")
    assert doc.read_text() == text


def test_a_missing_section_is_appended_and_reads_as_none() -> None:
    assert section("# Doc\n", "x") is None
    text = replace_section("# Doc\n", "x", "body")
    begin, end = markers("x")
    assert text == f"# Doc\n\n{begin}\nbody\n{end}\n"
    assert replace_section("", "x", "body") == f"{begin}\nbody\n{end}\n"
